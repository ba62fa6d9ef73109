"""kind = "dicom" on the fast data path (scu/): what peers store, deadlines, shutdown.

Byte for byte: the data set a peer stores equals the one in the source file, for every
transfer syntax of the corpus, to pynetdicom, DCMTK and Orthanc peers, plain and over TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from sendqueue.shared.errors import (
    AssociationRejected,
    DestinationUnavailable,
    PermanentError,
    TransientError,
)
from tests.destinations.conftest import TlsSCP, destination_config
from tests.destinations.pki import Pki
from tests.support.availability import unavailable
from tests.support.dicom_factory import make_instance, sop_instance_uid, to_bytes
from tests.support.orthanc import OrthancProcess, orthanc_available
from tests.support.ports import free_port
from tests.support.scp import ScriptedSCP, StorescpProcess
from tests.support.variety import data_set_bytes, variety

Stored = Callable[[], dict[str, bytes]]
"""SOP Instance UID -> the data set bytes the peer keeps."""


def config(port: int, aet: str, **keys: Any) -> Any:
    keys.setdefault("dimse_timeout", "20s")
    return destination_config(host="127.0.0.1", port=port, called_aet=aet, **keys)


def _files(directory: Path) -> dict[str, bytes]:
    kept = {}
    for path in directory.rglob("*"):
        if path.is_file():
            raw = path.read_bytes()
            kept[str(pydicom.dcmread(io.BytesIO(raw)).SOPInstanceUID)] = data_set_bytes(raw)
    return kept


@contextlib.contextmanager
def peer(kind: str, pki: Pki | None) -> Iterator[tuple[int, str, Stored]]:
    """(port, AE title, what it stored) of a running peer of that kind."""
    with tempfile.TemporaryDirectory(prefix="sq-fast-") as name:
        out = Path(name, "received")
        if kind == "pynetdicom":
            scp: ScriptedSCP = (
                TlsSCP(pki.server_context(), aet="PYPEER", write_dir=out)
                if pki
                else ScriptedSCP(aet="PYPEER", write_dir=out)
            )
            with scp:
                yield scp.port, scp.aet, lambda: _files(out)
        elif kind == "storescp":
            if shutil.which("storescp") is None:
                unavailable("storescp (dcmtk) is not installed")
            tls = ["+tls", str(pki.server_key), str(pki.server_cert), "-ic"] if pki else []
            # +B: the data set is written exactly as it came off the wire
            with StorescpProcess(output_dir=out, aet="DCMTKPEER", extra_args=["+B", *tls]) as s:
                yield s.port, s.aet, lambda: _files(out)
        else:
            if not orthanc_available():
                unavailable("Orthanc is not installed (Debian package orthanc)")
            with OrthancProcess(aet="ORTHPEER", extra_config=_orthanc_tls(pki)) as orthanc:

                def stored() -> dict[str, bytes]:
                    kept = {}
                    for instance in orthanc.instances():
                        raw = orthanc.download(instance)
                        kept[sop_instance_uid(raw)] = data_set_bytes(raw)
                    return kept

                yield orthanc.dicom_port, orthanc.aet, stored


def _orthanc_tls(pki: Pki | None) -> dict[str, Any]:
    if pki is None:
        return {}
    return {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(pki.server_cert),
        "DicomTlsPrivateKey": str(pki.server_key),
        "DicomTlsTrustedCertificates": str(pki.ca),
        "DicomTlsRemoteCertificateRequired": False,
    }


@pytest.mark.parametrize("data_path", ["fast", "pynetdicom"])
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("kind", ["pynetdicom", "storescp", "orthanc"])
async def test_every_transfer_syntax_is_stored_byte_for_byte(
    kind, tls, data_path, request, make_destination, spool
):
    pki = request.getfixturevalue("pki") if tls else None
    instances = variety()
    with peer(kind, pki) as (port, aet, stored):
        tls_keys = {"tls": {"ca_file": str(pki.ca)}} if pki else {}
        destination = make_destination(config(port, aet, data_path=data_path, **tls_keys))
        for name, data in instances.items():
            assert await destination.send(spool(data)), name
        kept = await asyncio.to_thread(_wait_stored, stored, len(instances))
    for name, data in instances.items():
        source = data_set_bytes(data)
        if name == "deflated" and len(source) % 2:
            source += b"\0"  # the one NULL an odd deflate stream needs on the network
        got = kept[sop_instance_uid(data)]
        if kind == "orthanc" and name == "deflated":
            # Orthanc keeps a deflated data set deflated anew: compare what it holds
            assert _inflated(got) == _inflated(source), name
        else:
            assert got == source, name


def _wait_stored(stored: Stored, count: int, timeout: float = 30) -> dict[str, bytes]:
    deadline = time.monotonic() + timeout
    while True:
        kept = stored()
        if len(kept) >= count or time.monotonic() > deadline:
            return kept
        time.sleep(0.1)


def _inflated(deflated: bytes) -> bytes:
    import zlib

    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(deflated)


async def test_the_command_names_the_data_sets_own_uids(scp, make_destination, spool):
    # Given a file whose meta disagrees with its data set (as some archives write them)
    data = make_instance()
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    destination = make_destination(config(scp.port, scp.aet))
    # Then the C-STORE carries the data set's (0008,0016)/(0008,0018), as Orthanc's does
    assert await destination.send(spool(to_bytes(ds))) == "Success"
    assert scp.stored_uids() == {str(ds.SOPInstanceUID)}


class _CommentingSCP(ScriptedSCP):
    """Refuses every instance with 0xA900, an error comment and an offending element."""

    def _on_store(self, event: Any) -> Any:
        super()._on_store(event)
        answer = Dataset()
        answer.Status = 0xA900
        answer.ErrorComment = "PatientID does not match"
        answer.OffendingElement = [0x00100020]
        return answer


async def test_the_peers_error_comment_and_offending_element_are_in_the_reason(
    make_destination, spool
):
    with _CommentingSCP(aet="COMMENTING") as scp:
        destination = make_destination(config(scp.port, scp.aet))
        with pytest.raises(PermanentError) as failure:
            await destination.send(spool(make_instance()))
    assert failure.value.reason_class == "dimse-a9xx"
    assert "PatientID does not match" in str(failure.value)
    assert "(0010,0020)" in str(failure.value)


class _MuteProxy:
    """Passes the association negotiation on to an SCP, then never reads from the client
    again: a peer that stops reading in the middle of a data set."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> _MuteProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        for sock in [self._server, *self._open]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._thread.join(5)

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._server.accept()
                server = socket.create_connection(("127.0.0.1", self.upstream))
                self._open += [client, server]
                header = _recv_exact(client, 6)
                server.sendall(header + _recv_exact(client, int.from_bytes(header[2:], "big")))
                threading.Thread(target=_pump, args=(server, client), daemon=True).start()


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)


@pytest.fixture
def large_instance() -> bytes:
    """32 MB: more than every socket buffer between us and a peer that stopped reading."""
    return make_instance(rows=4096, cols=4096)


async def test_a_peer_that_stops_reading_costs_one_attempt(
    scp, make_destination, spool, large_instance
):
    with _MuteProxy(scp.port) as proxy:
        destination = make_destination(config(proxy.port, scp.aet, dimse_timeout="2s"))
        started = time.monotonic()
        with pytest.raises(TransientError) as failure:
            await destination.send(spool(large_instance))
        assert time.monotonic() - started < 15
        assert failure.value.reason_class == "no-response"
        assert "dimse_timeout" in str(failure.value)
        assert destination.connections_open() == 0  # aborted, not left half-open


async def test_a_peer_that_never_answers_is_aborted_after_dimse_timeout(
    scp, make_destination, spool
):
    scp.store_delay = 30
    destination = make_destination(config(scp.port, scp.aet, dimse_timeout="1s"))
    started = time.monotonic()
    with pytest.raises(TransientError) as failure:
        await destination.send(spool(make_instance()))
    assert time.monotonic() - started < 10
    assert failure.value.reason_class == "no-response"
    assert destination.connections_open() == 0


async def test_closing_interrupts_a_send_that_is_stuck(
    scp, make_destination, spool, large_instance
):
    with _MuteProxy(scp.port) as proxy:
        destination = make_destination(config(proxy.port, scp.aet, dimse_timeout="120s"))
        sending = asyncio.create_task(destination.send(spool(large_instance)))
        deadline = time.monotonic() + 10
        while destination.connections_open() == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # well into the data set by now
        started = time.monotonic()
        await asyncio.wait_for(destination.close(), 10)
        with pytest.raises(TransientError):
            await asyncio.wait_for(sending, 10)
        assert time.monotonic() - started < 10


async def test_refusals_and_an_absent_peer_say_what_happened(make_destination, spool):
    with ScriptedSCP(aet="STRICT", require_called_aet=True) as strict:
        wrong_aet = make_destination(config(strict.port, "SOMEONE-ELSE"))
        with pytest.raises(AssociationRejected) as rejected:
            await wrong_aet.send(spool(make_instance()))
        assert rejected.value.reason_class == "association-rejected-permanent"
        strict.refuse_associations(30)
        busy = make_destination(config(strict.port, strict.aet))
        with pytest.raises(DestinationUnavailable) as refused:
            await busy.send(spool(make_instance()))
        assert refused.value.reason_class == "association-rejected"
    absent = make_destination(config(free_port(), "NOBODY", connect_timeout="2s"))
    with pytest.raises(DestinationUnavailable) as unreachable:
        await absent.probe()
    assert unreachable.value.reason_class == "unreachable"


async def test_an_idle_association_is_released_and_a_new_one_opened(scp, make_destination, spool):
    destination = make_destination(config(scp.port, scp.aet, idle_timeout="1s"))
    assert await destination.send(spool(make_instance())) == "Success"
    assert destination.connections_open() == 1
    await asyncio.sleep(1.2)
    await asyncio.to_thread(destination.data_path.release_idle)
    assert destination.connections_open() == 0
    assert await destination.send(spool(make_instance())) == "Success"
    assert scp.associations == 2


async def test_a_reused_association_the_peer_dropped_is_replaced_at_once(make_destination, spool):
    # Given an association left open, and the peer restarted meanwhile (on the same port)
    port = free_port()
    with ScriptedSCP(aet="RESTARTS", port=port) as first:
        destination = make_destination(config(port, first.aet))
        assert await destination.send(spool(make_instance())) == "Success"
    with ScriptedSCP(aet="RESTARTS", port=port) as second:
        # Then the next instance goes out on a new association, not as a failure
        data = make_instance()
        assert await destination.send(spool(data)) == "Success"
        assert second.stored_uids() == {sop_instance_uid(data)}


async def test_an_odd_deflate_stream_is_padded_without_touching_the_file(
    scp, make_destination, spool
):
    data = variety()["deflated"]
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == (
        DeflatedExplicitVRLittleEndian
    )
    path = spool(data)
    destination = make_destination(config(scp.port, scp.aet))
    assert await destination.send(path) == "Success"
    assert path.read_bytes() == data


@pytest.mark.parametrize("data_path", ["fast", "pynetdicom"])
@pytest.mark.parametrize("memory_limit", [1 << 20, 0], ids=["in-memory", "spooled"])
async def test_deliver_downloads_and_sends_in_one_worker(
    orthanc, scp, make_destination, workdir, data_path, memory_limit
):
    from sendqueue.services.sender.fetch import InstanceFetcher
    from tests.destinations.conftest import source_config

    fetcher = InstanceFetcher(source_config(orthanc), memory_limit)
    destination = make_destination(config(scp.port, scp.aet, data_path=data_path))
    data = make_instance()
    spool = workdir / "job.dcm"
    size, detail, took = await destination.deliver(fetcher, orthanc.upload(data), spool)
    fetcher.close()
    assert (size, detail) == (len(data), "Success") and took >= 0
    assert scp.stored_uids() == {sop_instance_uid(data)}
    assert spool.exists() == (memory_limit == 0 or data_path == "pynetdicom")


async def test_deliver_falls_back_to_an_uncompressed_copy(orthanc, make_destination, workdir):
    from pydicom.uid import ExplicitVRLittleEndian

    from sendqueue.services.sender.fetch import InstanceFetcher
    from tests.destinations.conftest import source_config
    from tests.support.dicom_factory import make_jpeg_instance

    if shutil.which("dcmcjpeg") is None:
        unavailable("dcmcjpeg (dcmtk) makes the JPEG instance")
    fetcher = InstanceFetcher(source_config(orthanc), 1 << 20)
    with ScriptedSCP(aet="PLAIN", transfer_syntaxes=[ExplicitVRLittleEndian]) as plain:
        destination = make_destination(config(plain.port, plain.aet), source=source_config(orthanc))
        data = make_jpeg_instance()
        _, detail, _ = await destination.deliver(fetcher, orthanc.upload(data), workdir / "job.dcm")
        fetcher.close()
        assert "transcoded to Explicit VR Little Endian" in detail
        assert plain.stored_uids() == {sop_instance_uid(data)}
