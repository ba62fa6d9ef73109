"""kind = "dicomweb": STOW-RS to Orthanc's DICOMweb plugin, and the answers it never gives."""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import pytest
from aiohttp import web

from sendqueue.services.sender.destinations.http import parse_retry_after
from sendqueue.shared.errors import DestinationUnavailable, PermanentError, TransientError
from tests.destinations.conftest import HttpsStub, destination_config, status, stow_answer
from tests.support.availability import unavailable
from tests.support.dicom_factory import make_instance, make_study, sop_instance_uid
from tests.support.orthanc import OrthancProcess


def web_config(server: OrthancProcess, **keys: Any) -> Any:
    keys.setdefault("url", server.url + "/dicom-web")
    keys.setdefault("username", server.username)
    keys.setdefault("password", server.password)
    return destination_config(kind="dicomweb", **keys)


def stored_uids(server: OrthancProcess) -> set[str]:
    return {server.instance_tags(i)["SOPInstanceUID"] for i in server.instances()}


async def test_stow_stores_the_instance_as_sent(dicomweb_orthanc, make_destination, spool):
    destination = make_destination(web_config(dicomweb_orthanc))
    await destination.probe()
    data = make_instance(patient_id="WEB")
    assert await destination.send(spool(data)) == "Stored"
    [instance_id] = dicomweb_orthanc.instances()
    assert dicomweb_orthanc.download(instance_id) == data


async def test_batches_group_instances_of_one_study_within_the_caps(
    dicomweb_orthanc, make_destination, spool
):
    # Given batching of up to 4 instances or 2 MiB, and 6 instances (~0.5 MB) of one study
    # plus 2 of another, all spooled at the same time
    # (concurrency 2: one request per study at a time, so the others wait and batch)
    destination = make_destination(
        web_config(
            dicomweb_orthanc, concurrency=2, batch_max_instances=4, batch_max_bytes=2 * 1024 * 1024
        )
    )
    big = make_study(6, rows=512, cols=512)
    small = make_study(2)
    # When they are sent concurrently
    results = await asyncio.gather(*(destination.send(spool(d)) for d in big + small))
    # Then every instance is stored, in fewer requests than instances
    assert results == ["Stored"] * 8
    assert stored_uids(dicomweb_orthanc) == {sop_instance_uid(d) for d in big + small}
    assert destination.requests_sent < 8


async def test_a_full_peer_is_transient_and_the_retry_stores_it(
    require_orthanc, make_destination, spool
):
    from tests.support.orthanc import dicomweb_plugin_path

    plugin = dicomweb_plugin_path()
    if plugin is None:
        unavailable("orthanc-dicomweb is not installed")
    config = {"MaximumStorageSize": 1}
    with OrthancProcess(aet="FULLWEB", plugins=[plugin], extra_config=config) as server:
        filler = server.upload(make_instance(patient_id="FILL", rows=512, cols=512))
        patient = server.get_json(f"/instances/{filler}/patient")["ID"]
        server.request("PUT", f"/patients/{patient}/protected", b"1")
        destination = make_destination(web_config(server))
        data = make_instance(patient_id="NEW", rows=512, cols=512)
        # The plugin answers 200 but lists the instance neither as stored nor as failed.
        with pytest.raises(TransientError) as failure:
            await destination.send(spool(data))
        assert not isinstance(failure.value, PermanentError | DestinationUnavailable)
        assert failure.value.reason_class == "stow-unconfirmed"
        server.request("PUT", f"/patients/{patient}/protected", b"0")
        assert await destination.send(spool(data)) == "Stored"
        assert sop_instance_uid(data) in stored_uids(server)


async def test_an_instance_the_peer_cannot_parse_is_permanent(
    dicomweb_orthanc, make_destination, spool
):
    broken = make_instance()[:400] + b"\xff\xff\xff\xff" * 8
    destination = make_destination(web_config(dicomweb_orthanc))
    with pytest.raises(PermanentError) as failure:
        await destination.send(spool(broken))
    assert failure.value.reason_class == "http-400"


async def test_rejected_credentials_pause_until_they_work(
    dicomweb_orthanc, make_destination, spool
):
    destination = make_destination(web_config(dicomweb_orthanc, password="wrong"))
    with pytest.raises(DestinationUnavailable) as failure:
        await destination.send(spool(make_instance()))
    assert failure.value.reason_class == "auth-rejected"
    with pytest.raises(DestinationUnavailable):
        await destination.probe()
    await make_destination(web_config(dicomweb_orthanc)).probe()
    assert dicomweb_orthanc.instances() == []


async def test_stow_over_https_with_a_ca_bundle(
    dicomweb_orthanc, tls_proxy, pki, make_destination, spool
):
    url = await tls_proxy(dicomweb_orthanc.url) + "/dicom-web"
    destination = make_destination(
        web_config(dicomweb_orthanc, url=url, tls={"ca_file": str(pki.ca)})
    )
    await destination.probe()
    data = make_instance(patient_id="TLSWEB")
    assert await destination.send(spool(data)) == "Stored"
    assert stored_uids(dicomweb_orthanc) == {sop_instance_uid(data)}


# -- answers Orthanc's plugin does not give, from a scripted HTTPS server --------------------


@pytest.fixture
def stub_destination(https_stub: HttpsStub, pki, make_destination) -> Any:
    def make(**keys: Any) -> Any:
        keys.setdefault("url", https_stub.url)
        keys.setdefault("tls", {"ca_file": str(pki.ca)})
        return make_destination(destination_config(kind="dicomweb", **keys))

    return make


async def test_a_202_is_judged_instance_by_instance(https_stub, stub_destination, spool):
    # concurrency 2: one request per study at a time, so the instances batch
    destination = stub_destination(concurrency=2, batch_max_instances=4)
    study = make_study(4)
    ok, busy, bad, warned = (sop_instance_uid(d) for d in study)

    codes = {busy: 0xA700, bad: 0xC000}

    def answer(uids: list[str]) -> web.Response:
        failed = {uid: codes[uid] for uid in uids if uid in codes}
        stored = [uid for uid in uids if uid not in codes]
        return stow_answer(stored, failed, status=202 if failed else 200)

    https_stub.default = answer
    results = await asyncio.gather(
        *(destination.send(spool(d)) for d in study), return_exceptions=True
    )
    by_uid = dict(zip((ok, busy, bad, warned), results, strict=True))
    assert by_uid[ok] == "Stored"
    assert isinstance(by_uid[busy], TransientError)
    assert by_uid[busy].reason_class == "stow-a7xx"
    assert isinstance(by_uid[bad], PermanentError)
    assert by_uid[bad].reason_class == "stow-cxxx"
    assert by_uid[warned] == "Stored"
    # Each instance went once, in fewer requests than instances, as application/dicom
    # parts of a multipart/related body.
    assert sorted(u for r in https_stub.received for u in r.sop_uids) == sorted(by_uid)
    assert len(https_stub.received) < 4
    request = https_stub.received[-1]
    assert request.path == "/dicomweb/studies"
    content_type = request.headers["Content-Type"]
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')


async def test_whole_request_statuses(https_stub, stub_destination, spool):
    destination = stub_destination(token="secret")
    data = make_instance()
    later = email.utils.formatdate(time.time() + 120, usegmt=True)
    https_stub.script(
        status(409),
        status(415),
        status(400),
        status(429, {"Retry-After": later}),
        status(503),
        status(408),
        status(401),
        lambda _uids: web.Response(text="not json"),
        lambda _uids: web.Response(status=202, text="not json"),
    )
    for expected in ("http-409", "http-415", "http-400"):
        with pytest.raises(PermanentError) as permanent:
            await destination.send(spool(data))
        assert permanent.value.reason_class == expected
    with pytest.raises(TransientError) as limited:
        await destination.send(spool(data))
    assert limited.value.retry_after is not None and 100 < limited.value.retry_after <= 120
    for expected in ("http-503", "http-408"):
        with pytest.raises(TransientError) as transient:
            await destination.send(spool(data))
        assert transient.value.reason_class == expected
        assert not isinstance(transient.value, DestinationUnavailable)
    with pytest.raises(DestinationUnavailable):
        await destination.send(spool(data))
    with pytest.raises(TransientError):
        await destination.send(spool(data))  # a 200 without a STOW answer is no proof
    with pytest.raises(TransientError):
        await destination.send(spool(data))  # 202 without a readable list
    assert https_stub.received[0].headers["Authorization"] == "Bearer secret"
    assert https_stub.received[0].headers["Accept"] == "application/dicom+json"


async def test_probe_accepts_a_server_that_refuses_the_get(https_stub, stub_destination):
    destination = stub_destination()
    https_stub.script(status(405), status(403), status(502))
    await destination.probe()
    for _ in range(2):
        with pytest.raises(DestinationUnavailable):
            await destination.probe()


def test_retry_after_parsing():
    now = 1_700_000_000.0
    assert parse_retry_after("30") == 30.0
    assert parse_retry_after(email.utils.formatdate(now + 90, usegmt=True), now) == 90.0
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
