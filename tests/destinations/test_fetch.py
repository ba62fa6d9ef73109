"""Downloads in the worker threads (services/sender/fetch.py), against a real Orthanc."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sendqueue.services.sender.fetch import InstanceFetcher
from sendqueue.shared.config import OrthancConfig
from sendqueue.shared.durations import Duration
from sendqueue.shared.errors import InstanceNotFound, SourceUnavailable
from tests.destinations.conftest import source_config
from tests.support.dicom_factory import make_instance
from tests.support.ports import free_port


@pytest.fixture
def fetcher(orthanc) -> Iterator[InstanceFetcher]:
    made = InstanceFetcher(source_config(orthanc), memory_limit=1024 * 1024)
    yield made
    made.close()


def test_a_small_instance_stays_in_memory_and_a_large_one_goes_to_the_spool(
    orthanc, fetcher, tmp_path
):
    small, large = make_instance(), make_instance(rows=1024, cols=1024)  # 8 KB, 2 MB
    spool = tmp_path / "job.dcm"
    got = fetcher.fetch(orthanc.upload(small), spool)
    assert (got.size, got.data, got.path) == (len(small), small, None)
    assert not spool.exists()
    got = fetcher.fetch(orthanc.upload(large), spool)  # same connection, kept alive
    assert (got.size, got.data, got.path) == (len(large), None, spool)
    assert spool.read_bytes() == large


def test_a_missing_instance_and_refused_credentials_say_so(orthanc, fetcher, tmp_path):
    with pytest.raises(InstanceNotFound):
        fetcher.fetch("no-such-instance", tmp_path / "x.dcm")
    config = OrthancConfig(url=orthanc.url, username=orthanc.username, password="wrong")
    with pytest.raises(SourceUnavailable) as refused:
        InstanceFetcher(config, 1024).fetch("anything", tmp_path / "x.dcm")
    assert refused.value.reason_class == "source-auth"


def test_an_absent_orthanc_is_unavailable(tmp_path):
    config = OrthancConfig(url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(SourceUnavailable):
        InstanceFetcher(config, 1024).fetch("anything", tmp_path / "x.dcm")


class _DropsIdleConnections(BaseHTTPRequestHandler):
    """Answers with keep-alive, then drops the connection anyway (as Orthanc does when a
    connection has been idle): the next request on it finds it closed."""

    protocol_version = "HTTP/1.1"
    body = b"DICM-ish"

    def do_GET(self) -> None:  # http.server calls it by this name
        self.server.requests += 1  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)
        self.close_connection = True

    def log_message(self, *_: object) -> None:
        pass


@contextlib.contextmanager
def _dropping_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DropsIdleConnections)
    server.requests = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_dropped_keep_alive_connection_is_replaced_once(tmp_path: Path):
    with _dropping_server() as server:
        port = server.server_address[1]
        fetcher = InstanceFetcher(OrthancConfig(url=f"http://127.0.0.1:{port}"), 1024)
        for _ in range(3):
            assert fetcher.fetch("id", tmp_path / "x.dcm").data == b"DICM-ish"
        fetcher.close()
        assert server.requests == 3  # type: ignore[attr-defined]


def test_closing_ends_a_download_from_a_stalled_orthanc(tmp_path: Path):
    import socket
    import time

    # Given an "Orthanc" that accepts the connection and never answers
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        fetcher = InstanceFetcher(
            OrthancConfig(url=f"http://127.0.0.1:{port}", timeout=Duration(60)), 1024
        )
        failed: list[BaseException] = []

        def download() -> None:
            try:
                fetcher.fetch("id", tmp_path / "x.dcm")
            except BaseException as exc:
                failed.append(exc)

        worker = threading.Thread(target=download)
        worker.start()
        accepted, _ = server.accept()
        time.sleep(0.2)  # the request is out; the worker waits for the answer
        started = time.monotonic()
        fetcher.close()
        worker.join(10)
        accepted.close()
    # Then the worker is free at once (not after the 60 s timeout), with a clear error
    assert not worker.is_alive() and time.monotonic() - started < 5
    assert isinstance(failed[0], SourceUnavailable)
