"""Peers for destination tests: Orthancs (plain, DICOMweb, HTTPS), a TLS SCP, an HTTPS stub.

Everything is made per test (the PKI per session) and removed afterwards: processes are
stopped by the launchers' context managers, files live in TemporaryDirectory.
"""

from __future__ import annotations

import functools
import io
import json
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pydicom
import pytest
from aiohttp import web

from sendqueue.services.sender.destinations import Destination, create_destination
from sendqueue.shared.config import DestinationConfig, OrthancConfig, parse_config
from tests.destinations.pki import Pki, make_pki, openssl_available
from tests.support.availability import unavailable
from tests.support.orthanc import OrthancProcess, dicomweb_plugin_path
from tests.support.ports import free_port
from tests.support.scp import ScriptedSCP

# -- configs and files ----------------------------------------------------------------------


def destination_config(**keys: Any) -> DestinationConfig:
    """A DestinationConfig through the real parser (TOML-like dict, durations as strings)."""
    keys.setdefault("name", "dest")
    config = parse_config({"destinations": [keys]}, environ={})
    return config.destinations[0]


def source_config(orthanc: OrthancProcess) -> OrthancConfig:
    return OrthancConfig(url=orthanc.url, username=orthanc.username, password=orthanc.password)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A scratch directory (the sender's spool), removed after the test."""
    with tempfile.TemporaryDirectory(prefix="sq-dest-") as name:
        yield Path(name)


@pytest.fixture
def spool(workdir: Path) -> Callable[[bytes], Path]:
    """Write an instance where the consumer would have spooled it; returns the path."""
    counter = iter(range(1_000_000))

    def write(data: bytes) -> Path:
        path = workdir / f"job-{next(counter)}.dcm"
        path.write_bytes(data)
        return path

    return write


@pytest.fixture
async def make_destination() -> AsyncIterator[Callable[..., Destination]]:
    """create_destination(), closed after the test."""
    made: list[Destination] = []

    def make(config: DestinationConfig, **kwargs: Any) -> Destination:
        destination = create_destination(config, **kwargs)
        made.append(destination)
        return destination

    yield make
    for destination in made:
        await destination.close()


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pki() -> Iterator[Pki]:
    if not openssl_available():
        unavailable("the openssl command is needed for the throw-away CA")
    with tempfile.TemporaryDirectory(prefix="sq-pki-") as name:
        yield make_pki(Path(name))


class TlsSCP(ScriptedSCP):
    """ScriptedSCP listening with DICOM TLS (pynetdicom's ssl_context)."""

    def __init__(self, ssl_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        start_server = self._ae.start_server
        self._ae.start_server = functools.partial(  # type: ignore[method-assign]
            start_server, ssl_context=ssl_context
        )


# -- Orthanc peers --------------------------------------------------------------------------


@pytest.fixture
def peer_orthanc(require_orthanc: None) -> Iterator[OrthancProcess]:
    """A second Orthanc, the receiving peer of kind "orthanc"."""
    with OrthancProcess(aet="PEER") as server:
        yield server


@pytest.fixture
def dicomweb_orthanc(require_orthanc: None) -> Iterator[OrthancProcess]:
    """Orthanc with the DICOMweb plugin: a real STOW-RS server at url + /dicom-web."""
    plugin = dicomweb_plugin_path()
    if plugin is None:
        unavailable("orthanc-dicomweb is not installed")
    with OrthancProcess(aet="WEBPEER", plugins=[plugin]) as server:
        yield server


# -- an HTTPS stub --------------------------------------------------------------------------

Answer = Callable[[list[str]], web.StreamResponse]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    sop_uids: list[str]
    body_bytes: int


@dataclass
class HttpsStub:
    """An aiohttp server (HTTPS by default) answering from a script; records each request.

    STOW requests are parsed part by part, so the script sees the SOP Instance UIDs.
    """

    url: str
    answers: list[Answer] = field(default_factory=list)
    default: Answer = field(default=lambda uids: stow_ok(uids))
    received: list[Received] = field(default_factory=list)

    def script(self, *answers: Answer) -> None:
        self.answers = list(answers)


def stow_answer(stored: list[str], failed: dict[str, int], status: int = 200) -> web.Response:
    def item(uid: str, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
            "00081155": {"vr": "UI", "Value": [uid]},
            **extra,
        }

    doc = {
        "00081199": {"vr": "SQ", "Value": [item(uid, {}) for uid in stored]},
        "00081198": {
            "vr": "SQ",
            "Value": [
                item(uid, {"00081197": {"vr": "US", "Value": [code]}})
                for uid, code in failed.items()
            ],
        },
    }
    return web.Response(
        status=status, body=json.dumps(doc).encode(), content_type="application/dicom+json"
    )


def stow_ok(uids: list[str]) -> web.Response:
    return stow_answer(uids, {})


def status(code: int, headers: dict[str, str] | None = None) -> Answer:
    return lambda _uids: web.Response(status=code, text=f"scripted {code}", headers=headers)


async def _read_request(request: web.Request) -> tuple[list[str], int]:
    if not request.content_type.startswith("multipart/"):
        data = await request.read()
        return [_sop_uid(data)] if data else [], len(data)
    uids, size = [], 0
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        data = await part.read()  # type: ignore[union-attr]
        size += len(data)
        uids.append(_sop_uid(data))
    return uids, size


def _sop_uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture
async def https_stub(pki: Pki) -> AsyncIterator[HttpsStub]:
    async for stub in _serve(pki.server_context()):
        yield stub


async def _serve(context: ssl.SSLContext | None) -> AsyncIterator[HttpsStub]:
    port = free_port()
    scheme = "https" if context else "http"
    stub = HttpsStub(url=f"{scheme}://127.0.0.1:{port}/dicomweb")

    async def handle(request: web.Request) -> web.StreamResponse:
        uids, size = await _read_request(request)
        stub.received.append(Received(request.path_qs, dict(request.headers), uids, size))
        answer = stub.answers.pop(0) if stub.answers else stub.default
        return answer(uids)

    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield stub
    finally:
        await runner.cleanup()


@pytest.fixture
async def tls_proxy(pki: Pki) -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    """An HTTPS front (test CA's certificate) for a plain-HTTP peer, as nginx would be.

    Debian's Orthanc 1.10.1 crashes (SIGSEGV) on its first HTTPS connection when
    SslEnabled is on, so HTTPS to a real Orthanc goes through this streaming proxy.
    """
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(target: str) -> str:
        session = aiohttp.ClientSession(auto_decompress=False)
        sessions.append(session)

        async def forward(request: web.Request) -> web.StreamResponse:
            headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
            async with session.request(
                request.method, target + request.path_qs, headers=headers, data=request.content
            ) as upstream:
                body = await upstream.read()
                keep = {"Content-Type", "Retry-After", "WWW-Authenticate"}
                out = {k: v for k, v in upstream.headers.items() if k in keep}
                return web.Response(status=upstream.status, body=body, headers=out)

        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=pki.server_context()).start()
        return f"https://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()
    for session in sessions:
        await session.close()
