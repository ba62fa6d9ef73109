"""Orthanc's own failed sends (store jobs) are captured and delivered through sendqueue.

Real Orthanc, a real DICOM peer (pynetdicom SCP) and a real second Orthanc as a peer; the
sends are Orthanc's own asynchronous `POST /modalities/{id}/store` and `/peers/{id}/store`.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sendqueue.shared.orthanc_destinations import with_orthanc_destinations
from tests.integration.harness import (
    ADMIN_TOKEN,
    Pipeline,
    dicom_destination,
    wait_for,
    wait_received,
)
from tests.support.dicom_factory import make_instance, make_study, sop_instance_uid
from tests.support.orthanc import OrthancProcess
from tests.support.ports import free_port
from tests.support.scp import ScriptedSCP

pytestmark = pytest.mark.integration

MODALITY = "pacs"
PEER = "archive"


@pytest.fixture
def pacs() -> Iterator[ScriptedSCP]:
    """A DICOM peer that is down until the test starts it."""
    server = ScriptedSCP(aet="PACS")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def peer_orthanc(require_orthanc: None) -> Iterator[OrthancProcess]:
    """A second Orthanc, down until the test starts it (its ports are chosen already)."""
    peer = OrthancProcess(aet="ARCHIVE")
    try:
        yield peer
    finally:
        peer.close()


@pytest.fixture
def source(
    require_orthanc: None, pacs: ScriptedSCP, peer_orthanc: OrthancProcess
) -> Iterator[OrthancProcess]:
    """The Orthanc whose sends fail: it knows the PACS as a modality and the peer."""
    extra = {
        "JobsHistorySize": 200,
        "DicomModalities": {MODALITY: {"AET": "PACS", "Host": "127.0.0.1", "Port": pacs.port}},
        "OrthancPeers": {
            PEER: {
                "Url": peer_orthanc.url + "/",
                "Username": peer_orthanc.username,
                "Password": peer_orthanc.password,
            }
        },
    }
    with OrthancProcess(aet="SOURCE", extra_config=extra) as server:
        yield server


def pipeline_for(
    amqp_url: str, source: OrthancProcess, tmp: Path, destinations: list[dict[str, Any]]
) -> Pipeline:
    # No routes: whatever sendqueue sends here, it sends because Orthanc's job failed.
    return Pipeline(
        amqp_url=amqp_url, orthanc=source, tmp=tmp, destinations=destinations, routes=[]
    )


def pacs_destination(pacs: ScriptedSCP) -> dict[str, Any]:
    return dicom_destination("pacs-dest", pacs.port, "PACS", orthanc_modality=MODALITY)


def peer_destination(peer: OrthancProcess) -> dict[str, Any]:
    return {
        "name": "archive-dest",
        "kind": "orthanc",
        "url": peer.url,
        "username": peer.username,
        "password": peer.password,
        "orthanc_peer": PEER,
    }


def upload_study(source: OrthancProcess, count: int, patient: str) -> tuple[str, set[str]]:
    """Uploads a study; returns its Orthanc ID and its SOP Instance UIDs."""
    files = make_study(count, patient_id=patient)
    ids = [source.upload(data) for data in files]
    study = source.get_json(f"/instances/{ids[0]}/study")["ID"]
    return str(study), {sop_instance_uid(data) for data in files}


def orthanc_store(source: OrthancProcess, route: str, resources: list[str]) -> str:
    """Orthanc's own asynchronous send, as Orthanc Explorer or a script starts it."""
    answer = source.post_json(route, {"Resources": resources, "Asynchronous": True})
    return str(answer["ID"])


async def job_state(source: OrthancProcess, job_id: str, state: str) -> dict[str, Any]:
    async def fetch() -> dict[str, Any]:
        result: dict[str, Any] = await asyncio.to_thread(source.get_json, f"/jobs/{job_id}")
        return result

    return dict(await wait_for(fetch, lambda job: job["State"] == state, 30))


async def captured(pipeline: Pipeline) -> float:
    return await pipeline.metric_sum("ingest", "sendqueue_jobs_queued_total", source="orthanc-job")


async def jobs_read(pipeline: Pipeline, outcome: str) -> float:
    return await pipeline.metric_sum("ingest", "sendqueue_orthanc_jobs_total", outcome=outcome)


async def captures_audited(pipeline: Pipeline, count: int) -> list[dict[str, Any]]:
    async def fetch() -> list[dict[str, Any]]:
        status, body = await pipeline.admin("GET", "/api/audit")
        assert status == 200, body
        return [e for e in body["items"] if e["action"] == "capture"]

    return list(await wait_for(fetch, lambda found: len(found) >= count, 30))


async def wait_metric(read: Any, value: float, timeout: float = 30) -> None:
    await wait_for(read, lambda found: found >= value, timeout)


async def test_a_failed_modality_store_is_delivered_once_the_pacs_is_up_a_good_one_once(
    amqp_url: str, source: OrthancProcess, pacs: ScriptedSCP, tmp_path: Path
) -> None:
    pipeline = pipeline_for(amqp_url, source, tmp_path, [pacs_destination(pacs)])
    try:
        await pipeline.start()
        # Given ten instances that Orthanc itself fails to send: the PACS is down
        study, uids = upload_study(source, 10, "FAILED")
        failed = orthanc_store(source, f"/modalities/{MODALITY}/store", [study])
        job = await job_state(source, failed, "Failure")
        assert job["Type"] == "DicomModalityStore"
        await wait_metric(lambda: captured(pipeline), 10)
        # When the PACS comes up
        pacs.start()
        # Then all ten arrive through sendqueue, and nothing is parked
        assert await wait_received(pacs, 10) == uids
        assert (await pipeline.parked())["total"] == 0
        # And the audit log says which Orthanc job was captured, why it failed, how many
        [entry] = await captures_audited(pipeline, 1)
        assert (entry["who"], entry["count"]) == ("orthanc", 10)
        assert entry["details"]["orthanc_job"] == failed
        assert entry["details"]["source"] == "orthanc-job"
        assert entry["details"]["destination"] == "pacs-dest"
        assert "Connection refused" in entry["details"]["error"]

        # Given five more, sent by Orthanc while the PACS is up (its job succeeds)
        good_study, good_uids = upload_study(source, 5, "GOOD")
        good = orthanc_store(source, f"/modalities/{MODALITY}/store", [good_study])
        await job_state(source, good, "Success")
        # Then ingest reads the succeeded job and queues nothing for it
        await wait_metric(lambda: jobs_read(pipeline, "succeeded"), 1)
        assert await captured(pipeline) == 10
        assert await wait_received(pacs, 15) == uids | good_uids
        assert all(pacs.counts[uid] == 1 for uid in good_uids)
        assert await jobs_read(pipeline, "captured") == 1
    finally:
        await pipeline.stop()


async def test_a_failed_peer_store_is_delivered_once_the_peer_orthanc_is_up(
    amqp_url: str, source: OrthancProcess, peer_orthanc: OrthancProcess, tmp_path: Path
) -> None:
    pipeline = pipeline_for(amqp_url, source, tmp_path, [peer_destination(peer_orthanc)])
    try:
        await pipeline.start()
        # Given ten instances Orthanc fails to send to its peer, which is down
        study, uids = upload_study(source, 10, "PEERFAIL")
        failed = orthanc_store(source, f"/peers/{PEER}/store", [study])
        assert (await job_state(source, failed, "Failure"))["Type"] == "OrthancPeerStore"
        await wait_metric(lambda: captured(pipeline), 10)
        # When the peer comes up
        await asyncio.to_thread(peer_orthanc.start)
        # Then all ten arrive through sendqueue, nothing parked
        await wait_for(
            lambda: asyncio.to_thread(peer_uids, peer_orthanc), lambda found: found == uids, 60
        )
        delivered = await pipeline.metric_sum("sender", "sendqueue_jobs_sent_total")
        assert delivered == 10
        assert (await pipeline.parked())["total"] == 0

        # Given five more that Orthanc sends itself while the peer is up
        good_study, good_uids = upload_study(source, 5, "PEERGOOD")
        good = orthanc_store(source, f"/peers/{PEER}/store", [good_study])
        await job_state(source, good, "Success")
        await wait_metric(lambda: jobs_read(pipeline, "succeeded"), 1)
        # Then they are there once, and sendqueue sent nothing more
        assert peer_uids(peer_orthanc) == uids | good_uids
        assert await captured(pipeline) == 10
        assert await pipeline.metric_sum("sender", "sendqueue_jobs_sent_total") == 10
    finally:
        await pipeline.stop()


async def test_instances_deleted_since_the_failed_job_are_parked_as_not_found(
    amqp_url: str, source: OrthancProcess, pacs: ScriptedSCP, tmp_path: Path
) -> None:
    # Given a failed job for three instances, one of which is deleted before ingest reads it
    files = [make_instance(patient_id="GONE", instance_number=n) for n in range(3)]
    ids = [source.upload(data) for data in files]
    failed = orthanc_store(source, f"/modalities/{MODALITY}/store", ids)
    await job_state(source, failed, "Failure")
    source.delete_instance(ids[0])
    pacs.start()
    # When sendqueue starts
    pipeline = pipeline_for(amqp_url, source, tmp_path, [pacs_destination(pacs)])
    try:
        await pipeline.start()
        # Then the two left are delivered and the deleted one is parked as not-found
        assert await wait_received(pacs, 2) == {sop_instance_uid(d) for d in files[1:]}
        parked = await pipeline.wait_parked(1)
        [item] = parked["items"]
        assert item["reason_class"] == "not-found"
        assert item["orthanc_id"] == ids[0]
        assert item["orthanc_job"] == failed
        assert item["source"] == "orthanc-job"
        assert "Error in the network protocol" in item["orthanc_job_error"]
        assert item["orthanc_job_instances"] == 3
    finally:
        await pipeline.stop()


async def test_the_handled_jobs_survive_a_restart_and_are_not_captured_twice(
    amqp_url: str, source: OrthancProcess, pacs: ScriptedSCP, tmp_path: Path
) -> None:
    # Given a failed job captured and delivered
    study, uids = upload_study(source, 3, "ONCE")
    failed = orthanc_store(source, f"/modalities/{MODALITY}/store", [study])
    await job_state(source, failed, "Failure")
    pacs.start()
    pipeline = pipeline_for(amqp_url, source, tmp_path, [pacs_destination(pacs)])
    try:
        await pipeline.start()
        assert await wait_received(pacs, 3) == uids
        await pipeline.stop()
        # When ingest starts again while Orthanc still lists the failed job, and a new
        # job fails after it (ingest reads the whole history each time)
        await pipeline.start()
        pacs.stop()
        later, later_uids = upload_study(source, 2, "LATER")
        await job_state(
            source, orthanc_store(source, f"/modalities/{MODALITY}/store", [later]), "Failure"
        )
        await wait_metric(lambda: captured(pipeline), 2)
        pacs.start()
        # Then only the new job is captured: the first is not sent twice
        assert await wait_received(pacs, 5) == uids | later_uids
        assert await captured(pipeline) == 2
        assert all(pacs.counts[uid] == 1 for uid in uids)
    finally:
        await pipeline.stop()


def peer_uids(peer: OrthancProcess) -> set[str]:
    return {peer.instance_tags(i)["SOPInstanceUID"] for i in peer.instances()}


async def test_capture_all_makes_a_destination_of_every_modality_and_peer(
    amqp_url: str, source: OrthancProcess, pacs: ScriptedSCP, tmp_path: Path
) -> None:
    # Given capture_failed_jobs = "all" and no destination at all in the file
    pipeline = Pipeline(
        amqp_url=amqp_url,
        orthanc=source,
        tmp=tmp_path,
        destinations=[],
        routes=[],
        ingest={"capture_failed_jobs": "all"},
    )
    pacs.start()
    # When `sendqueue check` runs, it shows the destinations made of Orthanc's modality
    # and peer, with their settings
    check = await asyncio.to_thread(
        subprocess.run,
        [*pipeline.command, "check", "--config", str(pipeline.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=pipeline.cwd,
    )
    assert f"destination pacs (dicom, Orthanc modality 'pacs': PACS@127.0.0.1:{pacs.port}" in (
        check.stdout
    )
    assert "destination archive (orthanc, Orthanc peer 'archive': http://127.0.0.1:" in (
        check.stdout
    )
    # And a failed send to that modality is captured and delivered through it
    pipeline.config = await with_orthanc_destinations(pipeline.config)
    try:
        await pipeline.start()
        pacs.stop()
        study, uids = upload_study(source, 2, "ALL")
        failed = orthanc_store(source, f"/modalities/{MODALITY}/store", [study])
        await job_state(source, failed, "Failure")
        await wait_metric(lambda: captured(pipeline), 2)
        pacs.start()
        assert await wait_received(pacs, 2) == uids
    finally:
        await pipeline.stop()


LUA_HOOK = Path(__file__).parents[2] / "lua" / "sendqueue-on-job-failure.lua"


async def test_the_lua_hook_hands_a_failed_job_to_ingest_at_once(
    amqp_url: str, require_orthanc: None, pacs: ScriptedSCP, tmp_path: Path
) -> None:
    # Given an Orthanc that runs the shipped OnJobFailure hook, and an ingest that reads
    # Orthanc's job history only once an hour (so only the hook can bring the job in time)
    ingest_port = free_port()
    extra = {
        "JobsHistorySize": 1,
        "LuaScripts": [str(LUA_HOOK)],
        "Sendqueue": {"IngestUrl": f"http://127.0.0.1:{ingest_port}/", "Token": ADMIN_TOKEN},
        "DicomModalities": {MODALITY: {"AET": "PACS", "Host": "127.0.0.1", "Port": pacs.port}},
    }
    with OrthancProcess(aet="HOOKED", extra_config=extra) as hooked:
        pipeline = Pipeline(
            amqp_url=amqp_url,
            orthanc=hooked,
            tmp=tmp_path,
            destinations=[pacs_destination(pacs)],
            routes=[],
            ingest={"listen": f"127.0.0.1:{ingest_port}", "poll_interval": "1h"},
        )
        try:
            await pipeline.start()
            await wait_for(lambda: jobs_read(pipeline, "succeeded"), lambda _n: True, 5)
            # When Orthanc's own send fails, and a later job pushes it out of the history
            study, uids = upload_study(hooked, 3, "HOOK")
            failed = orthanc_store(hooked, f"/modalities/{MODALITY}/store", [study])
            await wait_metric(lambda: captured(pipeline), 3)
            # Then its instances were queued, and arrive once the PACS is up
            pacs.start()
            assert await wait_received(pacs, 3) == uids
            assert (await pipeline.parked())["total"] == 0
            # And posting the same job again queues nothing more
            hook = pipeline.url("ingest", "/api/orthanc-jobs")
            status, answer = await post_json(hook, {"orthanc_job": failed}, ADMIN_TOKEN)
            assert (status, answer["accepted"]) == (202, True)
            # (the hook changes what is sent: without an admin token it is refused)
            assert (await post_json(hook, {"orthanc_job": failed}))[0] == 401
            assert (await post_json(hook, {"orthanc_job": failed}, "not-the-token-at-all"))[
                0
            ] == 401
            await wait_metric(lambda: jobs_read(pipeline, "hook-repeat"), 1)
            assert await captured(pipeline) == 3
        finally:
            await pipeline.stop()


async def post_json(url: str, body: Any, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as response,
    ):
        return response.status, await response.json(content_type=None)


TAKE_OVER = Path(__file__).parents[2] / "lua" / "sendqueue-take-over-sends.lua"


async def test_the_take_over_hook_sends_orthancs_send_through_sendqueue(
    amqp_url: str, require_orthanc: None, tmp_path: Path
) -> None:
    # Given an Orthanc running the take-over hook, a slow PACS it knows as a modality (one
    # second per instance, so the job is still running when ingest cancels it), and a
    # modality no destination stands for
    with ScriptedSCP(aet="PACS", store_delay=1.0) as slow_pacs, ScriptedSCP(aet="OTHER") as other:
        ingest_port = free_port()
        extra = {
            "LuaScripts": [str(TAKE_OVER)],
            "Sendqueue": {"IngestUrl": f"http://127.0.0.1:{ingest_port}", "Token": ADMIN_TOKEN},
            "DicomModalities": {
                MODALITY: {"AET": "PACS", "Host": "127.0.0.1", "Port": slow_pacs.port},
                "other": {"AET": "OTHER", "Host": "127.0.0.1", "Port": other.port},
            },
        }
        with OrthancProcess(aet="VIEWER", extra_config=extra) as viewer:
            pipeline = Pipeline(
                amqp_url=amqp_url,
                orthanc=viewer,
                tmp=tmp_path,
                destinations=[pacs_destination(slow_pacs)],
                routes=[],
                ingest={"listen": f"127.0.0.1:{ingest_port}"},
            )
            try:
                await pipeline.start()
                # When a user sends a study from Orthanc (as Orthanc Explorer does)
                study, uids = upload_study(viewer, 3, "VIEWER")
                sent = orthanc_store(viewer, f"/modalities/{MODALITY}/store", [study])
                # Then Orthanc's job is cancelled, and sendqueue delivers the study
                cancelled = await job_state(viewer, sent, "Failure")
                assert cancelled["ErrorCode"] == 37, cancelled
                assert await wait_received(slow_pacs, 3, timeout=90) == uids
                assert await captured(pipeline) == 3
                assert (await pipeline.parked())["total"] == 0
                # And a send to a modality sendqueue does not stand for stays Orthanc's own
                other_study, other_uids = upload_study(viewer, 2, "OTHER")
                own = orthanc_store(viewer, "/modalities/other/store", [other_study])
                await job_state(viewer, own, "Success")
                assert other.stored_uids() == other_uids
                assert await captured(pipeline) == 3
            finally:
                await pipeline.stop()


async def test_a_small_jobs_history_size_read_from_orthanc_is_warned_about_at_start_up(
    amqp_url: str, require_orthanc: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an Orthanc that keeps 5 finished jobs and lets Lua run over REST
    extra = {"JobsHistorySize": 5, "ExecuteLuaEnabled": True}
    with OrthancProcess(aet="SHORTMEM", extra_config=extra) as short:
        pipeline = Pipeline(
            amqp_url=amqp_url, orthanc=short, tmp=tmp_path, destinations=[], routes=[]
        )
        try:
            # When ingest starts
            await pipeline.start("ingest")
            # Then it says the value, where it comes from, and what would be safe
            await wait_for(
                lambda: asyncio.sleep(0, caplog.text),
                lambda text: "JobsHistorySize is 5 (read from Orthanc)" in text,
                15,
            )
            assert "set it to 100 or more" in caplog.text
        finally:
            await pipeline.stop()
