"""sendqueue_orthanc_up on loopback: nothing listening, and a listener that never answers.

(Orthanc answering, stopping and coming back is tests/observability/test_alert_causes.py,
with a real Orthanc.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from sendqueue.shared.config import OrthancConfig
from sendqueue.shared.orthanc import OrthancClient
from sendqueue.shared.source_health import OrthancHealth
from tests.support.ports import free_port


def up(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("sendqueue_orthanc_up")


async def wait_value(registry: CollectorRegistry, value: float, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while up(registry) != value:
        assert time.monotonic() < deadline, f"sendqueue_orthanc_up is {up(registry)}"
        await asyncio.sleep(0.02)


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A port that accepts connections and never says a word (a stuck Orthanc)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def watched(registry: CollectorRegistry, port: int, timeout: float) -> None:
    health = OrthancHealth(registry)
    client = OrthancClient(OrthancConfig(url=f"http://127.0.0.1:{port}"), on_answer=health.saw)
    task = asyncio.create_task(health.watch(client, interval=0.05, timeout=timeout))
    try:
        await wait_value(registry, 0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()


async def test_it_starts_at_1_and_an_orthanc_that_refuses_connections_is_down() -> None:
    registry = CollectorRegistry()
    OrthancHealth(registry)
    assert up(registry) == 1  # nothing seen yet: no alert without evidence
    await watched(CollectorRegistry(), free_port(), timeout=5)


async def test_an_orthanc_that_accepts_but_never_answers_is_down(silent_port: int) -> None:
    started = time.monotonic()
    await watched(CollectorRegistry(), silent_port, timeout=0.3)
    assert time.monotonic() - started < 3  # the probe's own timeout, not Orthanc's 60 s


async def test_every_answers_call_of_the_client_tells_the_gauge() -> None:
    registry = CollectorRegistry()
    health = OrthancHealth(registry)
    client = OrthancClient(
        OrthancConfig(url=f"http://127.0.0.1:{free_port()}"), on_answer=health.saw
    )
    try:
        assert await client.answers() is False
    finally:
        await client.close()
    assert up(registry) == 0
    health.saw(True)
    assert up(registry) == 1
