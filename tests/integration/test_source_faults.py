"""Orthanc itself fails on one instance (its file is gone from the storage) while up.

Nothing may loop forever or hold up the other instances: the job is parked, visibly,
with Orthanc's answer as the reason.
"""

from __future__ import annotations

import asyncio

import aiohttp

from tests.integration.harness import dicom_destination, wait_for, wait_queue, wait_received
from tests.support.dicom_factory import make_study, sop_instance_uid


async def test_an_unreadable_file_is_retried_then_parked_and_the_rest_delivered(
    make_pipeline, orthanc, scp
):
    # Given three instances in Orthanc, one of whose files is lost from its storage
    study = make_study(3)
    ids = [orthanc.upload(data) for data in study]
    orthanc.lose_file(ids[1])
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    # When sendqueue forwards them (the route needs no tag beyond Orthanc's index)
    await pipeline.start()
    # Then the two readable ones are delivered, and the lost one is parked after its
    # attempts (Orthanc answers, so the destination is never paused for it)
    expected = {sop_instance_uid(study[0]), sop_instance_uid(study[2])}
    assert await wait_received(scp, 2) == expected
    parked = await pipeline.wait_parked(1)
    [item] = parked["items"]
    assert item["orthanc_id"] == ids[1] and item["reason_class"] == "source-error"
    assert "HTTP 500" in item["reason"] and item["attempts"] == 4
    assert await pipeline.metric_sum("sender", "sendqueue_destination_up", destination="pacs") == 1
    assert scp.stored_uids() == expected


async def test_an_unreadable_file_that_routing_needs_is_parked_and_the_feed_goes_on(
    make_pipeline, orthanc, scp
):
    # Given a route on a tag Orthanc does not index, so ingest must read each file
    study = make_study(3, modality="CT", extra={"SliceThickness": "0.625"})
    ids = [orthanc.upload(data) for data in study]
    orthanc.lose_file(ids[0])
    pipeline = make_pipeline(
        destinations=[
            dicom_destination("reading", scp.port, scp.aet),
            dicom_destination("mr-archive", scp.port, scp.aet),
        ],
        routes=[
            {"destinations": ["reading"], "match": {"Modality": "CT", "SliceThickness": "0.*"}},
            {"destinations": ["mr-archive"], "match": {"Modality": "MR"}},
        ],
        ingest={"poll_interval": "100ms"},
    )
    await pipeline.start()
    # Then the instance that cannot be routed is parked for the destination it may be for
    # (not for the MR archive: its Modality is known), and the instances after it go on
    expected = {sop_instance_uid(d) for d in study[1:]}
    assert await wait_received(scp, 2) == expected
    parked = await pipeline.wait_parked(1)
    [item] = parked["items"]
    assert (item["orthanc_id"], item["destination"]) == (ids[0], "reading")
    assert item["reason_class"] == "source-unreadable"
    assert "routing rules" in item["reason"]
    # and more instances stored later still flow
    later = make_study(2, modality="CT", extra={"SliceThickness": "0.5"})
    for data in later:
        orthanc.upload(data)
    assert await wait_received(scp, 4) == expected | {sop_instance_uid(d) for d in later}
    assert (await pipeline.parked())["total"] == 1


async def test_orthanc_down_mid_flow_loses_nothing_and_uses_no_attempt(make_pipeline, orthanc, scp):
    scp.store_delay = 0.05
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    await pipeline.start()
    study = make_study(30)
    for data in study:
        orthanc.upload(data)
    await wait_received(scp, 3)
    # Orthanc stops while jobs are queued and in flight, then comes back
    await asyncio.to_thread(orthanc.stop)
    await asyncio.sleep(2)
    await asyncio.to_thread(orthanc.start)
    more = make_study(5)
    for data in more:
        orthanc.upload(data)
    expected = {sop_instance_uid(d) for d in study + more}
    assert await wait_received(scp, 35, timeout=90) == expected
    assert (await pipeline.parked())["total"] == 0
    assert await pipeline.metric_sum("sender", "sendqueue_jobs_failed_total") == 0
    # (the outage did hit queued work: jobs went back to their queue untouched)
    assert await pipeline.metric_sum("sender", "sendqueue_jobs_returned_total") > 0


async def test_an_orthanc_whose_database_was_reset_is_followed_from_its_start(
    make_pipeline, orthanc, scp
):
    # Given a study forwarded, and ingest's cursor past its changes (stable ones included)
    first = make_study(3)
    for data in first:
        orthanc.upload(data)
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    await pipeline.start()
    await wait_received(scp, 3)
    await asyncio.sleep(orthanc.stable_age + 1.5)  # StableSeries, StableStudy, StablePatient
    await pipeline.stop()
    # When Orthanc is reinstalled on an empty database and receives one new instance
    await asyncio.to_thread(orthanc.reset_database)
    [later] = make_study(1)
    orthanc.upload(later)
    assert orthanc.changes()["Last"] < 3 + 3 + 3  # below ingest's cursor
    # Then sendqueue forwards it all the same
    await pipeline.start()
    assert sop_instance_uid(later) in await wait_received(scp, 4)


async def test_a_wrong_orthanc_url_pauses_instead_of_parking_everything_as_not_found(
    make_pipeline, orthanc, scp
):
    from sendqueue.shared.config import parse_config

    # Given jobs queued while no sender runs
    destinations = [dicom_destination("pacs", scp.port, scp.aet)]
    pipeline = make_pipeline(destinations=destinations)
    await pipeline.start("ingest", "retry")
    study = make_study(4)
    for data in study:
        orthanc.upload(data)
    await wait_queue(pipeline, "work.pacs", ready=4)
    await pipeline.stop()
    # When a sender starts with an Orthanc URL under which every path answers 404
    wrong = make_pipeline(destinations=destinations)
    wrong.data["orthanc"]["url"] = orthanc.url + "/not-orthanc"
    wrong.config = parse_config(wrong.data, environ={})
    await wrong.start("sender", "retry")
    await wait_for(
        lambda: wrong.metric_sum("sender", "sendqueue_jobs_returned_total"), lambda n: n > 0, 30
    )
    # Then nothing is parked as not-found: the jobs wait
    await asyncio.sleep(1)
    assert (await wrong.parked())["total"] == 0
    assert await wrong.metric_sum("sender", "sendqueue_jobs_failed_total") == 0
    await wrong.stop()
    # and a sender with the right URL delivers them all
    fixed = make_pipeline(destinations=destinations)
    await fixed.start("sender", "retry")
    assert await wait_received(scp, 4) == {sop_instance_uid(d) for d in study}


async def test_ingest_with_a_wrong_orthanc_url_keeps_retrying_instead_of_crashing(
    make_pipeline, orthanc, scp
):
    from sendqueue.shared.config import parse_config

    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    pipeline.data["orthanc"]["url"] = orthanc.url + "/not-orthanc"
    pipeline.config = parse_config(pipeline.data, environ={})
    await pipeline.start("ingest", wait_healthy=False)

    async def health() -> tuple[int, dict[str, bool]] | None:
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(pipeline.url("ingest", "/healthz")) as response,
            ):
                return response.status, await response.json()
        except aiohttp.ClientConnectionError:
            return None  # not listening yet

    # It stays up, says what is wrong, and keeps trying
    status = await wait_for(health, lambda answer: answer is not None and answer[0] == 503, 30)
    assert status[1]["checks"] == {"amqp": True, "orthanc": False}
    await wait_for(
        lambda: pipeline.metric_sum("ingest", "sendqueue_ingest_errors_total", stage="orthanc"),
        lambda n: n >= 2,
        30,
    )
    pipeline.check_running()
