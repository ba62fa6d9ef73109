"""The spine, end to end on real components: delivered, or parked with the reason."""

from __future__ import annotations

import asyncio

import aio_pika

from tests.integration.harness import PREFIX, dicom_destination, wait_for, wait_queue, wait_received
from tests.support.dicom_factory import make_study, sop_instance_uid
from tests.support.ports import free_port
from tests.support.scp import always, fail_first, fail_for


def upload(orthanc, datasets):
    return [orthanc.upload(data) for data in datasets]


async def test_200_instances_reach_the_scp_intact_and_none_is_parked(make_pipeline, orthanc, scp):
    # Given a running pipeline to one SCP
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    await pipeline.start()
    study = make_study(200)
    expected = {sop_instance_uid(data) for data in study}
    # When 200 instances are stored in Orthanc
    upload(orthanc, study)
    # Then the SCP has exactly their SOPInstanceUIDs and nothing is parked
    assert await wait_received(scp, 200, timeout=90) == expected
    assert (await pipeline.parked())["total"] == 0
    assert await pipeline.metric_sum("sender", "sendqueue_jobs_sent_total") == 200


async def test_out_of_resources_twice_is_delivered_after_exactly_two_retries(
    make_pipeline, orthanc, scp
):
    scp.status_for = fail_first(2, 0xA700)
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    await pipeline.start()
    study = make_study(10)
    upload(orthanc, study)
    uids = await wait_received(scp, 10, timeout=60)
    assert uids == {sop_instance_uid(data) for data in study}
    assert all(scp.receive_count(uid) == 3 for uid in uids)
    assert await pipeline.metric_sum("retry", "sendqueue_jobs_retried_total") == 20
    assert (
        await pipeline.metric_sum(
            "sender", "sendqueue_jobs_failed_total", **{"class": "dimse-a7xx"}
        )
        == 20
    )
    assert (await pipeline.parked())["total"] == 0


async def test_refused_associations_longer_than_the_ladder_park_nothing(
    make_pipeline, orthanc, scp
):
    # Given a ladder of 0.3 s + 0.6 s over 3 attempts, and an SCP refusing for 5 s
    pipeline = make_pipeline(
        destinations=[dicom_destination("pacs", scp.port, scp.aet)],
        retry={"delays": ["300ms", "600ms"], "max_attempts": 3},
    )
    scp.refuse_associations(5.0)
    await pipeline.start()
    study = make_study(6)
    upload(orthanc, study)
    # Then everything arrives once it accepts again, and nothing was parked
    assert await wait_received(scp, 6, timeout=60) == {sop_instance_uid(d) for d in study}
    assert scp.rejections > 0
    assert (await pipeline.parked())["total"] == 0


async def test_rejected_instances_are_parked_with_the_status_then_requeued_or_deleted(
    make_pipeline, orthanc, scp
):
    study = make_study(8)
    bad = {sop_instance_uid(data) for data in study[:4]}
    scp.status_for = fail_for(bad, 0xA900)
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    await pipeline.start()
    upload(orthanc, study)
    # Exactly the rejected ones are parked, each after one attempt, with the status
    parked = await pipeline.wait_parked(4)
    await wait_received(scp, 4)
    assert {item["sop_instance_uid"] for item in parked["items"]} == bad
    for item in parked["items"]:
        assert "0xA900" in item["reason"] and item["attempts"] == 1
        assert item["destination"] == "pacs" and item["study_instance_uid"]
        assert item["first_failed_at"] and item["last_failed_at"] and item["id"]
    assert scp.stored_uids() == {sop_instance_uid(d) for d in study} - bad
    # When the SCP is fixed and two are requeued by id, those two are delivered
    scp.status_for = always(0x0000)
    ids = [item["id"] for item in parked["items"]]
    status, body = await pipeline.admin("POST", "/api/parked/requeue", {"ids": ids[:2]})
    assert (status, body["requeued"]) == (200, 2)
    await wait_received(scp, 6)
    # And delete removes the other two
    status, body = await pipeline.admin("POST", "/api/parked/delete", {"ids": ids[2:]})
    assert (status, body["deleted"]) == (200, 2)
    assert (await pipeline.parked())["total"] == 0
    await wait_queue(pipeline, "parked", ready=0)
    assert await pipeline.metric_sum("retry", "sendqueue_jobs_requeued_total") == 2
    assert await pipeline.metric_sum("retry", "sendqueue_jobs_deleted_total") == 2


async def test_an_instance_deleted_after_queueing_is_parked_as_not_found_after_one_attempt(
    make_pipeline, orthanc, scp
):
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    await pipeline.start("ingest", "retry")
    [instance] = upload(orthanc, make_study(1))
    await wait_for(
        lambda: pipeline.metric_sum("ingest", "sendqueue_jobs_queued_total"), lambda n: n == 1, 20
    )
    orthanc.delete_instance(instance)
    await pipeline.start("sender")
    parked = await pipeline.wait_parked(1)
    [item] = parked["items"]
    assert item["orthanc_id"] == instance and item["attempts"] == 1
    assert item["reason_class"] == "not-found" and "404" in item["reason"]
    await asyncio.sleep(1.5)  # longer than the whole ladder: no retry happened
    assert await pipeline.metric_sum("retry", "sendqueue_jobs_retried_total") == 0
    assert scp.stored_uids() == set()


async def test_a_garbage_message_is_parked_and_the_sender_keeps_running(
    make_pipeline, orthanc, scp
):
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    await pipeline.start()
    connection = await aio_pika.connect(pipeline.config.amqp.url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(f"{PREFIX}.work")
        await exchange.publish(aio_pika.Message(b"\x00not json{"), routing_key="pacs")
    parked = await pipeline.wait_parked(1)
    [item] = parked["items"]
    assert item["reason_class"] == "decode-error" and "decoded" in item["reason"]
    upload(orthanc, make_study(2))
    await wait_received(scp, 2)
    pipeline.check_running()


async def test_two_destinations_one_dead_the_live_one_gets_everything(make_pipeline, orthanc, scp):
    dead_port = free_port()  # nothing listens there
    pipeline = make_pipeline(
        destinations=[
            dicom_destination("live", scp.port, scp.aet),
            dicom_destination("dead", dead_port, "NOBODY"),
        ]
    )
    await pipeline.start()
    study = make_study(12)
    upload(orthanc, study)
    assert await wait_received(scp, 12) == {sop_instance_uid(d) for d in study}
    await wait_queue(pipeline, "work.dead", ready=12, timeout=20)
    assert (await pipeline.parked())["total"] == 0
    up = await pipeline.metric_sum("sender", "sendqueue_destination_up", destination="dead")
    assert up == 0


async def _wait_orthanc_count(orthanc, count):
    return await wait_for(
        lambda: asyncio.to_thread(orthanc.instances), lambda ids: len(ids) >= count, 30
    )


async def test_a_permanent_association_rejection_parks_the_jobs_with_the_answer(
    make_pipeline, orthanc
):
    from tests.support.scp import ScriptedSCP

    # Given a PACS that knows only its own AE title, and a config that calls it wrongly;
    # the PACS is down at first, so the destination is paused and probed
    strict = ScriptedSCP(aet="STRICT", require_called_aet=True)
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", strict.port, "WRONG")])
    await pipeline.start()
    study = make_study(3)
    for data in study:
        orthanc.upload(data)
    await wait_for(
        lambda: pipeline.metric_sum("sender", "sendqueue_destination_up", destination="pacs"),
        lambda up: up == 0,
        30,
    )
    assert (await pipeline.parked())["total"] == 0
    # When it comes up and rejects the association for good
    with strict:
        parked = await pipeline.wait_parked(3)
    # Then each job is parked after one attempt, with the PACS's answer
    assert {i["sop_instance_uid"] for i in parked["items"]} == {sop_instance_uid(d) for d in study}
    for item in parked["items"]:
        assert item["reason_class"] == "association-rejected-permanent"
        assert "rejected-permanent" in item["reason"] and item["attempts"] == 1, item
    assert strict.stored_uids() == set()
