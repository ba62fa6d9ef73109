"""kind = "orthanc" against a real second Orthanc: stored, retried, parked, paused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web

from sendqueue.shared.errors import DestinationUnavailable, PermanentError, TransientError
from tests.destinations.conftest import HttpsStub, destination_config, status
from tests.support.dicom_factory import make_instance, sop_instance_uid
from tests.support.orthanc import OrthancProcess
from tests.support.ports import free_port


def peer_config(peer: OrthancProcess, **keys: Any) -> Any:
    keys.setdefault("url", peer.url)
    keys.setdefault("username", peer.username)
    keys.setdefault("password", peer.password)
    return destination_config(kind="orthanc", **keys)


def peer_uids(peer: OrthancProcess) -> set[str]:
    return {peer.instance_tags(i)["SOPInstanceUID"] for i in peer.instances()}


async def test_an_instance_is_stored_and_a_duplicate_counts_as_stored(
    peer_orthanc, make_destination, spool
):
    # Given an Orthanc peer destination
    destination = make_destination(peer_config(peer_orthanc))
    data = make_instance(patient_id="PEER")
    # When the same instance is sent twice
    first = await destination.send(spool(data))
    second = await destination.send(spool(data))
    # Then it is stored once, byte for byte, and both sends succeed
    assert (first, second) == ("Success", "Already stored")
    [instance_id] = peer_orthanc.instances()
    assert peer_orthanc.download(instance_id) == data
    await destination.probe()


async def test_a_full_peer_is_a_transient_failure_and_the_retry_succeeds(
    require_orthanc, make_destination, spool
):
    # Given a peer whose 1 MB storage is full of a protected patient
    with OrthancProcess(aet="FULLPEER", extra_config={"MaximumStorageSize": 1}) as peer:
        filler = peer.upload(make_instance(patient_id="FILL", rows=512, cols=512))
        patient = peer.get_json(f"/instances/{filler}/patient")["ID"]
        peer.request("PUT", f"/patients/{patient}/protected", b"1")
        destination = make_destination(peer_config(peer))
        data = make_instance(patient_id="NEW", rows=512, cols=512)
        # When an instance is sent, it fails with a transient error (HTTP 500)
        with pytest.raises(TransientError) as failure:
            await destination.send(spool(data))
        assert not isinstance(failure.value, PermanentError | DestinationUnavailable)
        assert failure.value.reason_class == "http-500"
        assert "storage is full" in str(failure.value)
        # When the peer may recycle again, the retry stores it
        peer.request("PUT", f"/patients/{patient}/protected", b"0")
        assert await destination.send(spool(data)) == "Success"
        assert sop_instance_uid(data) in peer_uids(peer)


async def test_a_peer_filter_refusing_the_instance_is_permanent(
    require_orthanc, make_destination, spool, workdir
):
    script = workdir / "filter.lua"
    script.write_text(
        "function ReceivedInstanceFilter(dicom, origin, info)\n"
        '  return dicom.PatientID ~= "REFUSED"\nend\n'
    )
    with OrthancProcess(aet="LUAPEER", extra_config={"LuaScripts": [str(script)]}) as peer:
        destination = make_destination(peer_config(peer))
        with pytest.raises(PermanentError) as failure:
            await destination.send(spool(make_instance(patient_id="REFUSED")))
        assert failure.value.reason_class == "filtered-out"
        assert await destination.send(spool(make_instance(patient_id="WELCOME"))) == "Success"


async def test_a_file_the_peer_cannot_parse_is_permanent(peer_orthanc, make_destination, spool):
    # A valid file meta, then a dataset cut in the middle of an element.
    data = make_instance()
    broken = data[:400] + b"\xff\xff\xff\xff" * 8
    destination = make_destination(peer_config(peer_orthanc))
    with pytest.raises(PermanentError) as failure:
        await destination.send(spool(broken))
    assert failure.value.reason_class == "http-400"
    assert peer_orthanc.instances() == []


async def test_wrong_credentials_pause_the_destination_until_they_work(
    peer_orthanc, make_destination, spool
):
    destination = make_destination(peer_config(peer_orthanc, password="wrong"))
    with pytest.raises(DestinationUnavailable) as failure:
        await destination.send(spool(make_instance()))
    assert failure.value.reason_class == "auth-rejected"
    # The consumer probes while paused: the probe must keep failing with these credentials.
    with pytest.raises(DestinationUnavailable):
        await destination.probe()
    await make_destination(peer_config(peer_orthanc)).probe()


async def test_a_peer_that_is_down_makes_the_destination_unavailable(make_destination, spool):
    destination = make_destination(
        destination_config(kind="orthanc", url=f"http://127.0.0.1:{free_port()}")
    )
    with pytest.raises(DestinationUnavailable) as failure:
        await destination.send(spool(make_instance()))
    assert failure.value.reason_class == "unreachable"
    with pytest.raises(DestinationUnavailable):
        await destination.probe()


# -- HTTPS -----------------------------------------------------------------------------------


async def test_https_peer_with_a_ca_bundle(peer_orthanc, tls_proxy, pki, make_destination, spool):
    # Given the peer behind HTTPS with a certificate of the test CA
    url = await tls_proxy(peer_orthanc.url)
    # Trusting the test CA: stored.
    trusted = make_destination(peer_config(peer_orthanc, url=url, tls={"ca_file": str(pki.ca)}))
    await trusted.probe()
    data = make_instance(patient_id="TLS")
    assert await trusted.send(spool(data)) == "Success"
    assert peer_uids(peer_orthanc) == {sop_instance_uid(data)}
    # Trusting another CA: nothing is sent, the destination is paused as misconfigured.
    untrusted = make_destination(
        peer_config(peer_orthanc, url=url, tls={"ca_file": str(pki.other_ca)})
    )
    with pytest.raises(DestinationUnavailable) as failure:
        await untrusted.send(spool(make_instance()))
    assert failure.value.reason_class == "tls-failed"
    with pytest.raises(DestinationUnavailable):
        await untrusted.probe()


# -- the rest of the HTTP table, on a scripted HTTPS server -----------------------------------


def orthanc_answer(status_text: str) -> Any:
    body = json.dumps({"ID": "x", "Status": status_text})
    return lambda _uids: web.Response(text=body, content_type="application/json")


async def test_http_statuses_map_to_retry_park_or_pause(
    https_stub: HttpsStub, pki, make_destination, spool
):
    destination = make_destination(
        destination_config(
            kind="orthanc",
            url=https_stub.url,
            token="t0ken",
            headers={"X-Site": "north"},
            tls={"ca_file": str(pki.ca)},
        )
    )
    data = make_instance()
    https_stub.script(
        status(503, {"Retry-After": "7"}),
        status(429),
        status(413),
        status(403),
        orthanc_answer("AlreadyStored"),
    )
    with pytest.raises(TransientError) as busy:
        await destination.send(spool(data))
    assert (busy.value.reason_class, busy.value.retry_after) == ("http-503", 7.0)
    with pytest.raises(TransientError) as limited:
        await destination.send(spool(data))
    assert limited.value.reason_class == "http-429" and limited.value.retry_after is None
    with pytest.raises(PermanentError) as too_large:
        await destination.send(spool(data))
    assert too_large.value.reason_class == "http-413"
    with pytest.raises(DestinationUnavailable) as forbidden:
        await destination.send(spool(data))
    assert forbidden.value.reason_class == "auth-rejected"
    assert await destination.send(spool(data)) == "Already stored"
    # Every request carried the bearer token, the extra header and the whole file.
    request = https_stub.received[-1]
    assert request.path == "/dicomweb/instances"
    assert request.headers["Authorization"] == "Bearer t0ken"
    assert request.headers["X-Site"] == "north"
    assert request.headers["Content-Type"] == "application/dicom"
    assert request.body_bytes == len(data)
