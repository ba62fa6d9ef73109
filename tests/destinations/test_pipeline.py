"""The new kinds inside the whole pipeline (ingest, sender, retry on a real RabbitMQ vhost):
one route fans out to several destinations; failures are retried or parked as classified."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.destinations.conftest import HttpsStub, stow_answer
from tests.integration.harness import Pipeline, wait_for
from tests.support.dicom_factory import make_instance, make_study, sop_instance_uid
from tests.support.orthanc import OrthancProcess


@pytest.fixture
async def make_pipeline(
    amqp_url: str, orthanc: OrthancProcess, workdir: Path
) -> AsyncIterator[Callable[..., Pipeline]]:
    """Like tests/integration's, with its files in workdir (removed after the test)."""
    made: list[Pipeline] = []

    def make(**kwargs: Any) -> Pipeline:
        pipeline = Pipeline(amqp_url=amqp_url, orthanc=orthanc, tmp=workdir, **kwargs)
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        await pipeline.stop()


def uids_in(server: OrthancProcess) -> set[str]:
    return {server.instance_tags(i)["SOPInstanceUID"] for i in server.instances()}


async def wait_uids(server: OrthancProcess, count: int, timeout: float = 30) -> set[str]:
    async def fetch() -> set[str]:
        return uids_in(server)

    return await wait_for(fetch, lambda uids: len(uids) >= count, timeout)


async def test_one_route_delivers_to_an_orthanc_peer_and_a_stow_server(
    make_pipeline, orthanc, peer_orthanc, dicomweb_orthanc
):
    # Given one route to a peer Orthanc and a DICOMweb server (batching on)
    pipeline = make_pipeline(
        destinations=[
            {
                "name": "peer",
                "kind": "orthanc",
                "url": peer_orthanc.url,
                "username": peer_orthanc.username,
                "password": peer_orthanc.password,
            },
            {
                "name": "web",
                "kind": "dicomweb",
                "url": dicomweb_orthanc.url + "/dicom-web",
                "username": dicomweb_orthanc.username,
                "password": dicomweb_orthanc.password,
                "concurrency": 4,
                "batch_max_instances": 4,
            },
        ]
    )
    await pipeline.start()
    study = make_study(12)
    expected = {sop_instance_uid(d) for d in study}
    # When a study arrives in the source Orthanc
    for data in study:
        orthanc.upload(data)
    # Then both destinations have every instance and nothing is parked
    assert await wait_uids(peer_orthanc, 12) == expected
    assert await wait_uids(dicomweb_orthanc, 12) == expected
    assert (await pipeline.parked())["total"] == 0


async def test_retried_and_parked_as_the_destination_answers(
    make_pipeline, orthanc, https_stub: HttpsStub, pki, workdir
):
    # Given a STOW server that is busy once (503, Retry-After 1) for one instance and
    # answers 409 for another, and a peer Orthanc whose filter refuses a third
    busy, conflict, fine = (make_instance(patient_id=p) for p in ("BUSY", "CONFLICT", "FINE"))
    busy_uid, conflict_uid = sop_instance_uid(busy), sop_instance_uid(conflict)
    seen: Counter[str] = Counter()

    def answer(uids: list[str]) -> web.Response:
        seen.update(uids)
        if busy_uid in uids and seen[busy_uid] == 1:
            return web.Response(status=503, headers={"Retry-After": "1"})
        if conflict_uid in uids:
            return web.Response(status=409)
        return stow_answer(uids, {})

    https_stub.default = answer
    script = workdir / "filter.lua"
    script.write_text(
        "function ReceivedInstanceFilter(dicom, origin, info)\n"
        '  return dicom.PatientID ~= "FINE"\nend\n'
    )
    with OrthancProcess(aet="LUAPEER", extra_config={"LuaScripts": [str(script)]}) as peer:
        pipeline = make_pipeline(
            destinations=[
                {
                    "name": "web",
                    "kind": "dicomweb",
                    "url": https_stub.url,
                    "tls": {"ca_file": str(pki.ca)},
                },
                {
                    "name": "peer",
                    "kind": "orthanc",
                    "url": peer.url,
                    "username": peer.username,
                    "password": peer.password,
                },
            ]
        )
        await pipeline.start()
        # When the three instances arrive
        for data in (busy, conflict, fine):
            orthanc.upload(data)
        # Then: the 409 and the filtered one are parked with their reasons, at once
        parked = await pipeline.wait_parked(2, timeout=60)
        reasons = {(p["destination"], p["reason_class"]) for p in parked["items"]}
        assert reasons == {("web", "http-409"), ("peer", "filtered-out")}
        assert all(p["attempts"] <= 1 for p in parked["items"])
        # and the busy one was retried once, then stored
        await wait_for(_async(lambda: seen[busy_uid]), lambda n: n >= 2, timeout=30)
        assert seen[conflict_uid] == 1
        assert uids_in(peer) == {sop_instance_uid(busy), conflict_uid}
        assert await pipeline.metric_sum("retry", "sendqueue_jobs_retried_total") >= 1
        await pipeline.stop()


def _async(fetch: Callable[[], Any]) -> Callable[[], Any]:
    async def call() -> Any:
        return fetch()

    return call
