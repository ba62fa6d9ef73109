"""Runs sendqueue against real components: in-process services or `sendqueue` processes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import aiohttp
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sendqueue.shared.config import Config, parse_config
from tests.support.orthanc import OrthancProcess
from tests.support.ports import free_port
from tests.support.processes import terminate

PREFIX = "sq"
ADMIN_TOKEN = "test-admin-token"


def _stack_of(task: asyncio.Task[Any]) -> str:
    out = io.StringIO()
    task.print_stack(file=out)
    for other in asyncio.all_tasks():
        if other is not task and not other.done():
            other.print_stack(limit=3, file=out)
    return out.getvalue()


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(data: dict[str, Any]) -> str:
    """Enough TOML for a sendqueue config: tables, arrays of tables, inline values."""
    lines: list[str] = []
    for key, section in data.items():
        if isinstance(section, list):
            for entry in section:
                lines.append(f"[[{key}]]")
                lines.extend(f"{k} = {toml_value(v)}" for k, v in entry.items())
        else:
            lines.append(f"[{key}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in section.items())
        lines.append("")
    return "\n".join(lines)


def dicom_destination(name: str, port: int, aet: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "dicom",
        "host": "127.0.0.1",
        "port": port,
        "called_aet": aet,
        "concurrency": 2,
        **extra,
    }


class Pipeline:
    """One sendqueue deployment under test: its config, services, admin and metrics."""

    def __init__(
        self,
        *,
        amqp_url: str,
        orthanc: OrthancProcess,
        tmp: Path,
        destinations: list[dict[str, Any]],
        routes: list[dict[str, Any]] | None = None,
        retry: dict[str, Any] | None = None,
        ingest: dict[str, Any] | None = None,
        amqp: dict[str, Any] | None = None,
        sender: dict[str, Any] | None = None,
    ) -> None:
        self.tmp = tmp
        self.data: dict[str, Any] = {
            "orthanc": {
                "url": orthanc.url,
                "username": orthanc.username,
                "password": orthanc.password,
            },
            "amqp": {"url": amqp_url, "prefix": PREFIX, "depth_interval": "1s", **(amqp or {})},
            "ingest": {
                "listen": f"127.0.0.1:{free_port()}",
                "poll_interval": "200ms",
                "state_dir": str(tmp / "ingest-state"),
                "start_from": "beginning",
                **(ingest or {}),
            },
            "sender": {
                "listen": f"127.0.0.1:{free_port()}",
                "spool_dir": str(tmp / "spool"),
                "probe_min": "200ms",
                "probe_max": "1s",
                "shutdown_grace": "5s",
                # One process whatever the host's CPUs (the default "auto" follows them):
                # a test that kills "the sender" kills the process that sends.
                "processes": 1,
                **(sender or {}),
            },
            "retry": {
                "listen": f"127.0.0.1:{free_port()}",
                "delays": ["300ms", "600ms"],
                "max_attempts": 4,
                "admin_token": ADMIN_TOKEN,
                "state_dir": str(tmp / "retry-state"),
                **(retry or {}),
            },
            "destinations": destinations,
            "routes": routes
            if routes is not None
            else [{"destinations": [d["name"] for d in destinations]}],
        }
        self.config: Config = parse_config(self.data, environ={})
        #: How `spawn` starts `sendqueue`, and where (a test of an installed copy sets both).
        self.command: list[str] = [sys.executable, "-m", "sendqueue.services.cli"]
        self.cwd: Path = Path(__file__).parents[2]
        self.config_path = tmp / "sendqueue.toml"
        self.config_path.write_text(to_toml(self.data))
        self.registries: dict[str, CollectorRegistry] = {}
        self._stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def vhost(self) -> str:
        """The RabbitMQ vhost this pipeline runs in (the AMQP URL's path)."""
        return unquote(urlsplit(self.config.amqp.url).path[1:])

    # -- in-process services ---------------------------------------------------------------
    async def start(self, *names: str, wait_healthy: bool = True) -> None:
        from sendqueue.services.cli.main import _services

        services = _services()
        for name in names or ("ingest", "sender", "retry"):
            registry = CollectorRegistry()
            self.registries[name] = registry
            self._tasks[name] = asyncio.create_task(
                services[name](self.config, self._stop, registry)
            )
        if wait_healthy:
            await self.wait_healthy(*(names or ("ingest", "sender", "retry")))

    async def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks.values(), timeout=timeout)
            if pending:
                stuck = [name for name, task in self._tasks.items() if task in pending]
                stacks = "\n".join(_stack_of(task) for task in pending)
                raise AssertionError(f"services did not stop in {timeout}s: {stuck}\n{stacks}")
        results = await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        self._stop = asyncio.Event()
        for proc in list(self._procs.values()):
            self._terminate(proc)
        self._procs.clear()
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    def check_running(self) -> None:
        for name, task in self._tasks.items():
            if task.done():
                raise AssertionError(f"service {name} stopped: {task.exception()!r}")

    # -- services as processes -------------------------------------------------------------
    def spawn(self, name: str, *args: str, key: str | None = None) -> subprocess.Popen[bytes]:
        """`sendqueue NAME --config ... ARGS` as a process, known as `key` (default NAME)."""
        key = key or name
        log = open(self.tmp / f"{key}.log", "ab")  # noqa: SIM115 - owned by the process
        env = {**os.environ, "SENDQUEUE_LOG_LEVEL": "INFO"}
        proc = subprocess.Popen(
            [*self.command, name, "--config", str(self.config_path), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.cwd,
        )
        self._procs[key] = proc
        return proc

    def kill(self, name: str) -> None:
        proc = self._procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def terminate(self, name: str) -> int:
        return self._terminate(self._procs.pop(name))

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes]) -> int:
        return terminate(proc, timeout=20) or 0

    # -- HTTP helpers --------------------------------------------------------------------------
    def url(self, service: str, path: str) -> str:
        """`service` is a section name, or a "host:port" another process of it listens on."""
        listen = service if ":" in service else self.data[service]["listen"]
        return f"http://{listen}{path}"

    async def wait_healthy(self, *services: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            for service in services:
                last = "no answer"
                while True:
                    self.check_running()
                    self._check_spawned(service)
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(self.url(service, "/healthz")) as response:
                            if response.status == 200:
                                break
                            last = f"{response.status} {await response.text()}"
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"{service} not healthy after {timeout}s (last: {last})"
                            + self._log_tail(service)
                        )
                    await asyncio.sleep(0.1)

    def _check_spawned(self, key: str) -> None:
        """A spawned process that already ended never becomes healthy: say so at once."""
        proc = self._procs.get(key)
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"{key} exited with {proc.returncode} before it was healthy" + self._log_tail(key)
            )

    def _log_tail(self, key: str, lines: int = 40) -> str:
        path = self.tmp / f"{key}.log"
        if key not in self._procs or not path.exists():
            return ""
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        return f"\n--- {key} log (tail) ---\n" + "\n".join(tail)

    async def admin(
        self, method: str, path: str, body: Any = None, token: str | None = ADMIN_TOKEN
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if method == "POST" and body is None:
            body = {}  # every POST is JSON (the API refuses any other, against CSRF)
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, self.url("retry", path), json=body, headers=headers
            ) as response,
        ):
            return response.status, await response.json(content_type=None)

    async def parked(self, **query: str) -> dict[str, Any]:
        suffix = "&".join(f"{k}={v}" for k, v in query.items())
        status, body = await self.admin("GET", "/api/parked" + (f"?{suffix}" if suffix else ""))
        assert status == 200, body
        return body

    async def wait_parked(self, count: int, timeout: float = 30.0) -> dict[str, Any]:
        body = await wait_for(lambda: self.parked(), lambda b: b["total"] >= count, timeout)
        return body

    async def metrics(self, service: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.url(service, "/metrics")) as response,
        ):
            text = await response.text()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    async def metric_sum(self, service: str, name: str, **labels: str) -> float:
        samples = await self.metrics(service)
        return sum(
            value
            for (sample, sample_labels), value in samples.items()
            if sample == name and set(labels.items()) <= set(sample_labels)
        )


async def wait_for(
    fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float, interval: float = 0.2
) -> Any:
    """Poll an async fetch until done(result); TimeoutError with the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = await fetch()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met after {timeout}s; last: {result!r}"[:2000])
        await asyncio.sleep(interval)


async def wait_received(scp: Any, count: int, timeout: float = 60.0) -> set[str]:
    async def fetch() -> set[str]:
        return set(scp.stored_uids())

    return await wait_for(fetch, lambda uids: len(uids) >= count, timeout)


async def queue_ready(pipeline: Pipeline, queue: str) -> int:
    """Ready messages now, from the broker's own answer to a passive declare.

    (The management API and rabbitmqctl counts of quorum queues can lag by seconds.)
    """
    connection = await aio_pika.connect(pipeline.config.amqp.url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(f"{PREFIX}.{queue}", passive=True)
        return int(declared.declaration_result.message_count or 0)


async def wait_queue(pipeline: Pipeline, queue: str, *, ready: int, timeout: float = 15.0) -> int:
    """Poll until the queue holds exactly `ready` ready messages; TimeoutError otherwise."""
    return int(await wait_for(lambda: queue_ready(pipeline, queue), lambda n: n == ready, timeout))
