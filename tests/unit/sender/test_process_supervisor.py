"""The sender processes' supervisor: one /healthz and one /metrics for all its children."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter, Gauge

from sendqueue.services.sender.processes import supervisor_app

HEALTHY = json.dumps({"status": "ok", "checks": {"amqp": True, "consumers": True}})
STUCK = json.dumps({"status": "degraded", "checks": {"amqp": True, "consumers": False}})
PAGE = (
    "# HELP sendqueue_destination_up up\n"
    "# TYPE sendqueue_destination_up gauge\n"
    'sendqueue_destination_up{destination="pacs"} 1.0\n'
)


class FakeChild:
    """Answers as a sender process would; None: not running (or not answering)."""

    def __init__(self, index: int, health: str | None, metrics: str | None = PAGE) -> None:
        self.index = index
        self._answers = {"/healthz": health, "/metrics": metrics}

    async def ask(self, _session: aiohttp.ClientSession, path: str) -> tuple[int, str] | None:
        body = self._answers[path]
        if body is None:
            return None
        return (200 if path == "/metrics" or '"ok"' in body else 503), body


async def get(children: list[FakeChild], path: str) -> tuple[int, str]:
    registry = CollectorRegistry()
    Gauge("sendqueue_sender_processes", "running", registry=registry).set(len(children))
    async with aiohttp.ClientSession() as session:
        app = supervisor_app(children, registry, session)
        async with TestClient(TestServer(app)) as client:
            response = await client.get(path)
            return response.status, await response.text()


async def test_healthy_when_every_child_is():
    status, body = await get([FakeChild(1, HEALTHY), FakeChild(2, HEALTHY)], "/healthz")
    assert status == 200
    assert json.loads(body)["checks"] == {"processes": True, "amqp": True, "consumers": True}


async def test_one_stuck_child_makes_the_sender_unhealthy_naming_the_check():
    status, body = await get([FakeChild(1, HEALTHY), FakeChild(2, STUCK)], "/healthz")
    assert status == 503
    assert json.loads(body)["checks"]["consumers"] is False


async def test_a_child_not_running_makes_the_sender_unhealthy():
    status, body = await get([FakeChild(1, HEALTHY), FakeChild(2, None)], "/healthz")
    assert status == 503
    assert json.loads(body)["checks"]["processes"] is False


async def test_metrics_of_the_children_that_answer_labelled_by_process():
    children = [FakeChild(1, HEALTHY), FakeChild(2, None, metrics=None), FakeChild(3, HEALTHY)]
    status, body = await get(children, "/metrics")
    assert status == 200
    assert 'sendqueue_destination_up{destination="pacs",process="1"} 1.0' in body
    assert 'sendqueue_destination_up{destination="pacs",process="3"} 1.0' in body
    assert 'process="2"' not in body
    assert "sendqueue_sender_processes 3.0" in body


async def test_a_child_that_cannot_start_is_tried_again_counted_and_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from sendqueue.services.sender import processes

    attempts = 0

    async def refuse(*_args: object, **_kwargs: object) -> None:
        nonlocal attempts
        attempts += 1
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(processes.asyncio, "create_subprocess_exec", refuse)
    monkeypatch.setattr(processes, "RESTART_MIN", 0.01)
    registry = CollectorRegistry()
    restarts = Counter("restarts", "restarts", registry=registry)
    child = processes.SenderProcess(1, b"{}")
    stopping = asyncio.Event()
    try:
        task = asyncio.create_task(child.supervise(stopping, restarts))
        while attempts < 3:
            await asyncio.sleep(0.01)
        stopping.set()
        await asyncio.wait_for(task, 5)
    finally:
        child.sock.close()
    assert (registry.get_sample_value("restarts_total") or 0) >= 2
    assert "not started: OSError(24, 'Too many open files')" in caplog.text
