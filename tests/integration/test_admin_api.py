"""The admin API on real RabbitMQ: every endpoint, filter and error case."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.integration.harness import (
    ADMIN_TOKEN,
    PREFIX,
    dicom_destination,
    wait_for,
    wait_queue,
    wait_received,
)
from tests.integration.parked_factory import fill_parked, parked_job
from tests.support.dicom_factory import make_study, sop_instance_uid
from tests.support.ports import free_port
from tests.support.scp import always, fail_for


async def _parked_pipeline(make_pipeline, scp, **kw):
    pipeline = make_pipeline(
        destinations=[
            dicom_destination("pacs", scp.port, scp.aet),
            dicom_destination("other", scp.port, scp.aet),
        ],
        routes=[{"destinations": ["pacs"]}],
        retry={"admin_tokens": {"alice": "alice-token-0001"}},
        **kw,
    )
    await pipeline.start("retry")
    return pipeline


async def test_filters_paging_and_csv(make_pipeline, scp):
    pipeline = await _parked_pipeline(make_pipeline, scp)
    old = time.time() - 7200
    jobs = [parked_job(i, "pacs") for i in range(30)]
    jobs += [
        parked_job(
            100 + i,
            "other",
            reason_class="not-found",
            parked_at=old,
            last_error="not found in Orthanc (HTTP 404)",
        )
        for i in range(5)
    ]
    await fill_parked(pipeline.config.amqp.url, PREFIX, jobs)
    await pipeline.wait_parked(35, timeout=40)  # the index rebuilds from the queue

    assert (await pipeline.parked(destination="other"))["total"] == 5
    assert (await pipeline.parked(reason="not-found"))["total"] == 5
    assert (await pipeline.parked(patient="P1"))["total"] == 7
    study = jobs[5].study_instance_uid  # indexes 5, 15, 25
    by_study = await pipeline.parked(study=study)
    assert by_study["total"] == 3 and {i["study_instance_uid"] for i in by_study["items"]} == {
        study
    }
    assert (await pipeline.parked(since="1h"))["total"] == 30
    assert (await pipeline.parked(until="1h"))["total"] == 5
    # paging: 35 items, 10 at a time, no repeats, no gaps
    seen, cursor = [], None
    while True:
        page = await pipeline.parked(limit="10", **({"cursor": cursor} if cursor else {}))
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 35
    item = (await pipeline.parked(destination="other", limit="1"))["items"][0]
    for key in (
        "patient_id",
        "study_instance_uid",
        "series_instance_uid",
        "sop_instance_uid",
        "modality",
        "destination",
        "attempts",
        "first_failed_at",
        "last_failed_at",
        "reason",
        "error",
    ):
        assert key in item
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            pipeline.url("retry", "/api/parked?format=csv&destination=other"),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as response,
    ):
        assert response.status == 200 and response.content_type == "text/csv"
        lines = (await response.text()).strip().splitlines()
    assert len(lines) == 6 and lines[0].startswith("id,destination")


async def test_requeue_by_filter_to_another_destination_and_delete_all(make_pipeline, scp):
    pipeline = await _parked_pipeline(make_pipeline, scp)
    jobs = [parked_job(i, "pacs", patient_id="PX" if i < 4 else "PY") for i in range(10)]
    await fill_parked(pipeline.config.amqp.url, PREFIX, jobs)
    await pipeline.wait_parked(10, timeout=40)
    status, body = await pipeline.admin(
        "POST", "/api/parked/requeue", {"patient": "PX", "to": "other"}
    )
    assert (status, body) == (200, {"requeued": 4, "failed": 0})
    await wait_queue(pipeline, "work.other", ready=4)
    assert (await pipeline.parked())["total"] == 6
    status, body = await pipeline.admin("POST", "/api/parked/delete", {"all": True})
    assert (status, body["deleted"]) == (200, 6)
    assert (await pipeline.parked())["total"] == 0
    audit = (await pipeline.admin("GET", "/api/audit"))[1]["items"]
    assert [(e["action"], e["who"], e["count"]) for e in audit[:2]] == [
        ("delete", "admin", 6),
        ("requeue", "admin", 4),
    ]
    assert audit[1]["details"] == {"patient": "PX", "to": "other"}


async def test_bad_requests_get_clear_4xx_errors(make_pipeline, scp):
    pipeline = await _parked_pipeline(make_pipeline, scp)
    cases = [
        ("POST", "/api/parked/requeue", {"destination": "nowhere"}, 400, "unknown destination"),
        ("POST", "/api/parked/requeue", {"ids": ["bad id!"]}, 400, "malformed id"),
        ("POST", "/api/parked/requeue", {"ids": []}, 400, "non-empty list"),
        ("POST", "/api/parked/delete", {}, 400, "say what to select"),
        ("POST", "/api/parked/delete", {"all": "yes"}, 400, "'all' must be true"),
        ("POST", "/api/parked/delete", {"colour": "red"}, 400, "unknown field"),
        ("POST", "/api/parked/requeue", {"all": True, "to": "nowhere"}, 400, "'to' must name"),
        ("POST", "/api/parked/delete", {"since": "last tuesday"}, 400, "'since' must be"),
        ("GET", "/api/parked?limit=0", None, 400, "'limit'"),
        ("GET", "/api/parked?cursor=garbage", None, 400, "malformed cursor"),
        ("GET", "/api/parked?color=red", None, 400, "unknown query parameter"),
        ("POST", "/api/destinations/nowhere/pause", None, 404, "unknown destination"),
        (
            "POST",
            "/api/send",
            {"destination": "nowhere", "resources": ["x"]},
            400,
            "unknown destination",
        ),
        (
            "POST",
            "/api/send",
            {"destination": "pacs", "resources": ["../system"]},
            400,
            "malformed Orthanc ID",
        ),
        (
            "POST",
            "/api/send",
            {"destination": "pacs", "resources": ["no-such-id"]},
            404,
            "unknown Orthanc resource",
        ),
    ]
    for method, path, body, status, words in cases:
        got_status, got = await pipeline.admin(method, path, body)
        assert got_status == status, (path, body, got)
        assert words in got["error"], (path, body, got)
    # authentication
    status, body = await pipeline.admin("POST", "/api/parked/delete", {"all": True}, token=None)
    assert status == 401 and "Authorization" in body["error"]
    status, body = await pipeline.admin(
        "POST", "/api/parked/delete", {"all": True}, token="wrong-token"
    )
    assert status == 401 and "invalid token" in body["error"]
    # invalid JSON and oversized bodies
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
        url = pipeline.url("retry", "/api/parked/delete")
        async with session.post(url, data=b"{not json", headers=headers) as response:
            assert response.status == 400 and "not valid JSON" in (await response.json())["error"]
        async with session.post(url, data=b"x" * (9 * 1024 * 1024), headers=headers) as response:
            assert response.status == 413 and "too large" in (await response.json())["error"]


async def test_pause_keeps_jobs_waiting_across_restarts_and_resume_delivers(
    make_pipeline, orthanc, scp
):
    pipeline = make_pipeline(
        destinations=[dicom_destination("pacs", scp.port, scp.aet)],
        retry={"admin_tokens": {"alice": "alice-token-0001"}},
    )
    await pipeline.start()
    status, body = await pipeline.admin(
        "POST", "/api/destinations/pacs/pause", token="alice-token-0001"
    )
    assert (status, body) == (200, {"destination": "pacs", "paused": True})
    await wait_for(
        lambda: pipeline.metric_sum("sender", "sendqueue_destination_paused"), lambda v: v == 1, 10
    )
    study = make_study(5)
    for data in study:
        orthanc.upload(data)
    await wait_queue(pipeline, "work.pacs", ready=5)
    # the pause survives a restart of every service
    await pipeline.stop()
    await pipeline.start()
    queues = await wait_for(
        lambda: pipeline.admin("GET", "/api/queues"),
        lambda r: r[1]["destinations"][0]["state"] == "paused",
        10,
    )
    assert queues[1]["destinations"][0]["ready"] == 5
    await asyncio.sleep(1)
    assert scp.stored_uids() == set()
    status, _ = await pipeline.admin("POST", "/api/destinations/pacs/resume")
    assert status == 200
    assert await wait_received(scp, 5) == {sop_instance_uid(d) for d in study}
    audit = (await pipeline.admin("GET", "/api/audit"))[1]["items"]
    assert [(e["action"], e["who"]) for e in audit] == [("resume", "admin"), ("pause", "alice")]


async def test_queues_overview_and_send_on_the_admin_listen(make_pipeline, orthanc, scp):
    study = make_study(3)
    bad = sop_instance_uid(study[0])
    scp.status_for = fail_for({bad}, 0xA900)
    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)], routes=[])
    await pipeline.start()
    ids = [orthanc.upload(data) for data in study]
    series = orthanc.get_json(f"/instances/{ids[0]}")["ParentSeries"]
    status, body = await pipeline.admin(
        "POST", "/api/send", {"destination": "pacs", "resources": [series]}
    )
    assert (status, body) == (200, {"queued": 3, "destination": "pacs"})
    await wait_received(scp, 2)
    await pipeline.wait_parked(1)
    _, queues = await wait_for(
        lambda: pipeline.admin("GET", "/api/queues"),
        lambda r: r[1]["destinations"][0]["state"] == "up",
        10,
    )
    [pacs] = queues["destinations"]
    assert pacs["name"] == "pacs" and pacs["kind"] == "dicom" and pacs["parked"] == 1
    assert pacs["consumers"] == 1 and pacs["ready"] == 0
    assert queues["parked"] == 1 and {t["tier"] for t in queues["delay_tiers"]} == {
        "300ms",
        "600ms",
    }
    audit = (await pipeline.admin("GET", "/api/audit"))[1]["items"]
    assert audit[0]["action"] == "send" and audit[0]["count"] == 3
    scp.status_for = always(0)
    status, openapi = await pipeline.admin("GET", "/api/openapi.json")
    assert status == 200 and "/api/parked/requeue" in openapi["paths"]


async def test_a_retry_service_started_after_the_senders_learns_their_state_at_once(
    make_pipeline, scp
):
    # Periodic reports an hour apart: only the answer to retry's start-up broadcast can
    # tell it the destination is up.
    pipeline = make_pipeline(
        destinations=[dicom_destination("pacs", scp.port, scp.aet)],
        amqp={"depth_interval": "1h"},
    )
    await pipeline.start("sender")
    await asyncio.sleep(0.5)  # the sender's first report goes out with nobody listening
    await pipeline.start("retry")
    _, queues = await wait_for(
        lambda: pipeline.admin("GET", "/api/queues"),
        lambda r: r[1]["destinations"][0]["state"] != "unknown",
        5,
    )
    assert queues["destinations"][0]["state"] == "up"


async def test_delayed_counts_per_destination_survive_a_retry_restart(make_pipeline, orthanc, scp):
    scp.status_for = always(0xA700)
    pipeline = make_pipeline(
        destinations=[dicom_destination("pacs", scp.port, scp.aet)],
        retry={"delays": ["1m"]},
    )
    await pipeline.start()
    for data in make_study(3):
        orthanc.upload(data)

    def pacs_delayed(response):
        return response[1]["destinations"][0]["delayed"]

    await wait_for(
        lambda: pipeline.admin("GET", "/api/queues"), lambda r: pacs_delayed(r) == {"1m": 3}, 30
    )
    await pipeline.stop()
    await pipeline.start()
    _, queues = await pipeline.admin("GET", "/api/queues")
    assert queues["destinations"][0]["delayed"] == {"1m": 3}
    assert queues["parked"] == 0


async def test_jobs_of_a_destination_removed_from_the_config_are_parked(
    make_pipeline, orthanc, scp
):
    # Given jobs waiting for a dead destination, "old"
    destinations = [
        dicom_destination("pacs", scp.port, scp.aet),
        dicom_destination("old", free_port(), "GONE", connect_timeout="1s"),
    ]
    pipeline = make_pipeline(destinations=destinations)
    await pipeline.start()
    study = make_study(3)
    for data in study:
        orthanc.upload(data)
    await wait_received(scp, 3)
    await wait_queue(pipeline, "work.old", ready=3)
    await pipeline.stop()
    # When "old" is removed from the config and the services restart
    pipeline = make_pipeline(destinations=destinations[:1])
    await pipeline.start()
    # Then its jobs are parked, visibly, and can be sent elsewhere
    parked = await pipeline.wait_parked(3)
    assert {i["reason_class"] for i in parked["items"]} == {"unknown-destination"}
    assert {i["destination"] for i in parked["items"]} == {"old"}
    assert {i["sop_instance_uid"] for i in parked["items"]} == {sop_instance_uid(d) for d in study}
    status, body = await pipeline.admin(
        "POST", "/api/parked/requeue", {"destination": "old", "to": "pacs"}
    )
    assert (status, body["requeued"]) == (200, 3)
    await wait_for(
        lambda: pipeline.metric_sum("sender", "sendqueue_jobs_sent_total"), lambda n: n == 3, 30
    )
    assert (await pipeline.parked())["total"] == 0


async def test_calls_while_rabbitmq_is_away_answer_503_and_work_when_repeated(make_pipeline, scp):
    from tests.support import rabbit

    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    await pipeline.start()
    retry_connections = await asyncio.to_thread(
        rabbit.listed_connections, pipeline.vhost, 2, "sendqueue-retry"
    )
    # While the retry service's connections are down
    await asyncio.to_thread(rabbit.close_connections, retry_connections)
    status, body = await pipeline.admin("POST", "/api/parked/requeue", {"all": True})
    assert status == 503 and "RabbitMQ is unavailable" in body["error"]
    status, body = await pipeline.admin("POST", "/api/destinations/pacs/pause")
    assert status == 503 and "repeat it" in body["error"]
    # Then the same call succeeds once it has reconnected, and reaches the sender
    await wait_for(
        lambda: pipeline.admin("POST", "/api/destinations/pacs/pause"),
        lambda answer: answer[0] == 200,
        30,
        interval=1,
    )
    await wait_for(
        lambda: pipeline.metric_sum("sender", "sendqueue_destination_paused"), lambda v: v == 1, 10
    )


async def test_a_job_for_a_destination_without_a_queue_is_parked_not_dropped(make_pipeline, scp):
    import aio_pika

    from sendqueue.shared.schemas import encode, job_headers

    pipeline = make_pipeline(destinations=[dicom_destination("pacs", scp.port, scp.aet)])
    await pipeline.start("retry")
    # As a delay tier dead-letters or a shovel moves: no `mandatory`, nobody told if lost
    job = parked_job(1, "nowhere", parked_at=None)
    connection = await aio_pika.connect(pipeline.config.amqp.url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(f"{PREFIX}.work")
        message = aio_pika.Message(encode(job), headers=job_headers(job), delivery_mode=2)
        await exchange.publish(message, routing_key="nowhere")
    parked = await pipeline.wait_parked(1)
    [item] = parked["items"]
    assert (item["destination"], item["sop_instance_uid"]) == ("nowhere", job.sop_instance_uid)
    assert item["reason_class"] == "unknown-destination" and "no work queue" in item["reason"]
