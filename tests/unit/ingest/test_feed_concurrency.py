"""ChangesFeed resolves a page's changes concurrently: what it queues, and where the cursor
stays, must be as if it had resolved them one after the other."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sendqueue.services.ingest import feed
from sendqueue.shared.config import RouteConfig
from sendqueue.shared.errors import SourceThrottled
from tests.unit.fakes import FakeOrthanc

pytestmark = pytest.mark.timeout(10)


class SlowOrthanc(FakeOrthanc):
    """Answers an instance's GET after a delay of its own, and counts the GETs in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.delays: dict[str, float] = {}
        self.in_flight = 0
        self.most_in_flight = 0

    async def get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delays.get(path, 0))
            return await super().get_json(path, params)
        finally:
            self.in_flight -= 1


def _slow_orthanc(count: int) -> SlowOrthanc:
    """`count` instances; each answers slower than the next, so they resolve backwards."""
    orthanc = SlowOrthanc()
    for n in range(count):
        orthanc.store(f"o{n}", {"SOPInstanceUID": f"1.2.{n}"})
        orthanc.delays[f"/instances/o{n}"] = 0.002 * (count - n)
    return orthanc


async def test_jobs_are_queued_in_the_changes_order_though_resolved_out_of_order(make_ingest):
    # Given a page of instances whose later ones Orthanc answers first
    orthanc = _slow_orthanc(40)
    ingest = await make_ingest(orthanc, start_from="beginning")

    # When the feed queues the page
    await ingest.run_until(lambda: ingest.cursor == 40)

    # Then they were resolved several at a time, within the bound
    assert 1 < orthanc.most_in_flight <= feed._RESOLVING
    # And queued once each, in the order of their changes
    assert ingest.queued() == [(f"o{n}", "pacs") for n in range(40)]


async def test_a_failure_in_the_middle_of_a_page_keeps_the_cursor_before_the_page(make_ingest):
    # Given a page whose middle instance Orthanc cannot answer for now (HTTP 429 on the
    # file's tags, which the route needs), while the others answer at once
    routes = [RouteConfig(destinations=["pacs"], match={"SliceThickness": "*"})]
    orthanc = _slow_orthanc(9)
    for n in range(9):
        orthanc.file_tags[f"o{n}"] = {"SliceThickness": "1"}
    orthanc.errors["/instances/o4/simplified-tags"] = SourceThrottled("HTTP 429 on o4")
    ingest = await make_ingest(orthanc, start_from="beginning", routes=routes)

    # When the feed runs a few rounds into it
    await ingest.run_until(lambda: orthanc.asked("/instances/o4/simplified-tags") >= 3)

    # Then nothing of the page is queued and the cursor has not passed the failing change
    assert ingest.jobs() == [] and ingest.cursor == 0
    assert ingest.errors("orthanc") >= 2

    # And once Orthanc answers, the page is queued whole, in order, once
    del orthanc.errors["/instances/o4/simplified-tags"]
    await ingest.run_until(lambda: ingest.cursor == 9)
    assert ingest.queued() == [(f"o{n}", "pacs") for n in range(9)]


async def test_a_failed_round_leaves_no_request_running(make_ingest):
    # Given a page whose first instance fails at once while the others are slow
    orthanc = _slow_orthanc(20)
    orthanc.delays = dict.fromkeys(orthanc.delays, 0.5)
    orthanc.errors["/instances/o0"] = SourceThrottled("HTTP 429 on o0")
    orthanc.delays["/instances/o0"] = 0
    ingest = await make_ingest(orthanc, start_from="beginning", poll_interval=5)

    # When the round fails
    await ingest.run_until(lambda: ingest.errors("orthanc") == 1)

    # Then the other requests of the page were cancelled with it (none waits its 0.5 s)
    await asyncio.sleep(0.05)
    assert orthanc.in_flight == 0
    assert ingest.jobs() == [] and ingest.cursor == 0


async def test_the_instances_of_a_series_resolved_at_once_read_the_series_once(make_ingest):
    # Given a page of instances of one series, resolved concurrently
    orthanc = _slow_orthanc(30)
    orthanc.delays["/series/series-1"] = 0.05
    ingest = await make_ingest(orthanc, start_from="beginning")

    # When the page is queued
    await ingest.run_until(lambda: ingest.cursor == 30)

    # Then the series and its study were each read once, for all of them
    assert orthanc.asked("/series/series-1") == 1
    assert orthanc.asked("/studies/study-1") == 1
    assert len(ingest.jobs()) == 30


async def test_series_changes_resolved_at_once_queue_an_instance_once(make_ingest):
    # Given two StableSeries changes of the same series in one page (series routes go
    # through the no-resend ledger, which must see the page in order)
    orthanc = _slow_orthanc(3)
    orthanc.add_change("StableSeries", "series-1")
    orthanc.add_change("StableSeries", "series-1")
    routes = [RouteConfig(destinations=["pacs"], level="series")]
    ingest = await make_ingest(orthanc, start_from="beginning", routes=routes)

    # When the page is queued
    await ingest.run_until(lambda: ingest.cursor == 5)

    # Then each instance is queued once
    assert sorted(ingest.queued()) == [(f"o{n}", "pacs") for n in range(3)]
