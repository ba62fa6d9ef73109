"""HTTP destinations count an instance as stored only on an answer that says so.

A redirect is never followed (behind an SSO proxy whose session expired, a POST redirected
to a 200 login page would "succeed"); a 2xx that is not the kind's answer is retried; an
answer is read with a size cap and a total deadline.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from sendqueue.services.sender.destinations import http as http_module
from sendqueue.shared.errors import DestinationUnavailable, SendQueueError, TransientError
from tests.destinations.conftest import HttpsStub, destination_config, stow_answer
from tests.support.dicom_factory import make_instance, sop_instance_uid
from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(60)

LOGIN_PAGE = "<html><body><form action='/login'>Sign in</form></body></html>"


def html(_uids: list[str]) -> web.Response:
    return web.Response(text=LOGIN_PAGE, content_type="text/html")


def redirect_to_login(_uids: list[str]) -> web.Response:
    return web.Response(status=302, headers={"Location": "/login"})


@pytest.fixture(params=["dicomweb", "orthanc"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def stub_destination(https_stub: HttpsStub, pki, make_destination) -> Any:
    def make(kind: str, **keys: Any) -> Any:
        keys.setdefault("url", https_stub.url)
        keys.setdefault("tls", {"ca_file": str(pki.ca)})
        return make_destination(destination_config(kind=kind, **keys))

    return make


async def test_a_post_redirected_to_a_login_page_is_never_delivered(
    kind, https_stub, stub_destination, spool
):
    # Given a proxy that redirects every request to its login page, which answers 200
    destination = stub_destination(kind)
    https_stub.default = html
    https_stub.script(*[redirect_to_login] * 6)
    data = make_instance()

    # When six instances are sent
    outcomes = []
    for _ in range(6):
        with pytest.raises(SendQueueError) as failure:
            await destination.send(spool(data))
        outcomes.append(failure.value)

    # Then none counts as delivered: the destination is paused (not each job burnt), and
    # the redirect was not followed (six POSTs, no GET of the login page)
    assert all(isinstance(o, DestinationUnavailable) for o in outcomes)
    assert {o.reason_class for o in outcomes} == {"redirected"}
    assert "/login" in str(outcomes[0])
    assert [r.path for r in https_stub.received] == [https_stub.received[0].path] * 6


async def test_the_probe_does_not_take_a_redirect_for_up(kind, https_stub, stub_destination):
    destination = stub_destination(kind)
    https_stub.script(redirect_to_login)
    with pytest.raises(DestinationUnavailable):
        await destination.probe()
    assert len(https_stub.received) == 1


@pytest.mark.parametrize(
    "answer",
    [
        html,
        lambda _u: web.json_response({}),
        lambda _u: web.Response(status=204),
        lambda _u: web.Response(status=201, text="created"),
        lambda _u: web.Response(status=202, text="not json"),
        lambda _u: web.json_response([1, 2]),
    ],
    ids=["200-html", "200-empty-object", "204", "201", "202-text", "200-json-list"],
)
async def test_a_2xx_that_is_not_an_answer_is_retried(
    kind, answer, https_stub, stub_destination, spool
):
    destination = stub_destination(kind)
    https_stub.script(answer)
    with pytest.raises(TransientError) as failure:
        await destination.send(spool(make_instance()))
    assert not isinstance(failure.value, DestinationUnavailable)


def qido_answer(uid: str) -> web.Response:
    doc = [{"00080018": {"vr": "UI", "Value": [uid]}}]
    return web.Response(body=json.dumps(doc).encode(), content_type="application/dicom+json")


async def test_an_empty_200_counts_once_qido_finds_the_instance(
    https_stub, stub_destination, spool
):
    # Given a STOW server that answers an empty 200 (as the standard's "all stored" allows)
    destination = stub_destination("dicomweb")
    data = make_instance()
    uid = sop_instance_uid(data)
    empty = lambda _u: web.Response(status=200)  # noqa: E731
    https_stub.script(empty, lambda _u: qido_answer(uid), empty, lambda _u: web.json_response([]))

    # When the QIDO-RS search finds it, it is stored; when it does not, it is retried
    assert "QIDO-RS" in await destination.send(spool(data))
    with pytest.raises(TransientError) as unverified:
        await destination.send(spool(data))
    assert unverified.value.reason_class == "stow-unverified"
    searches = [r.path for r in https_stub.received if "SOPInstanceUID" in r.path]
    assert len(searches) == 2 and uid in searches[0]


async def test_a_real_stow_answer_still_counts(https_stub, stub_destination, spool):
    destination = stub_destination("dicomweb")
    data = make_instance()
    https_stub.script(lambda uids: stow_answer(uids, {}))
    assert await destination.send(spool(data)) == "Stored"


# -- answers read with a cap and a deadline ---------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def raw_peer() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """A plain-HTTP peer answering with a test's own handler; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        async def read_then_answer(request: web.Request) -> web.StreamResponse:
            await request.read()
            return await handler(request)

        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", read_then_answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def _drip(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    try:
        for _ in range(600):
            await response.write(b" ")
            await asyncio.sleep(0.05)
    except (ConnectionError, asyncio.CancelledError):
        pass
    return response


async def _huge(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    chunk = b" " * (1024 * 1024)
    try:
        for _ in range(64):
            await response.write(chunk)
    except ConnectionError:
        pass
    return response


async def test_a_slow_dripping_answer_fails_within_its_deadline(
    kind, raw_peer, make_destination, spool
):
    # Given a peer that sends its answer one byte every 50 ms, forever (each read
    # arrives well within the read timeout)
    url = await raw_peer(_drip)
    destination = make_destination(destination_config(kind=kind, url=url, http_timeout="2s"))

    # Then the send fails as transient within the deadline, instead of hanging
    async with asyncio.timeout(15):
        with pytest.raises(TransientError) as failure:
            await destination.send(spool(make_instance()))
    assert failure.value.reason_class == "http-slow-answer"


async def test_a_huge_answer_is_not_read_into_memory(
    kind, raw_peer, make_destination, spool, monkeypatch
):
    monkeypatch.setattr(http_module, "MAX_ANSWER_BYTES", 4 * 1024 * 1024)
    url = await raw_peer(_huge)
    destination = make_destination(destination_config(kind=kind, url=url))
    with pytest.raises(TransientError) as failure:
        await destination.send(spool(make_instance()))
    assert failure.value.reason_class == "http-huge-answer"
