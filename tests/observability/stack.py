"""The three services running in this event loop, each with its own registry and port."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from sendqueue.services.cli.main import _services
from sendqueue.services.sender.processes import run_sender_processes
from sendqueue.shared.config import Config, parse_config
from tests.support import rabbit
from tests.support.orthanc import OrthancProcess
from tests.support.ports import free_port
from tests.support.scp import ScriptedSCP

SERVICES = ("ingest", "sender", "retry")
#: The admin API shows patient data only with a token.
ADMIN_TOKEN = "observability-admin-token"
PREFIX = "sqo"


def stack_settings(
    *, amqp_url: str, orthanc: OrthancProcess, scp: ScriptedSCP, workdir: Path
) -> dict[str, Any]:
    """A fast-moving config as a plain dict: tests change keys before parse_config()."""
    user_host = rabbit.MGMT_URL.replace("://", f"://{rabbit.USER}:{rabbit.PASSWORD}@", 1)
    return {
        "orthanc": {
            "url": orthanc.url,
            "username": orthanc.username,
            "password": orthanc.password,
        },
        "amqp": {
            "url": amqp_url,
            "prefix": PREFIX,
            "management_url": user_host,
            "depth_interval": "1s",
        },
        "ingest": {
            "listen": f"127.0.0.1:{free_port()}",
            "poll_interval": "200ms",
            "state_dir": str(workdir / "ingest"),
            "start_from": "beginning",
        },
        "sender": {
            "listen": f"127.0.0.1:{free_port()}",
            "spool_dir": str(workdir / "spool"),
            "probe_min": "500ms",
            "probe_max": "1s",
            "shutdown_grace": "2s",
        },
        "retry": {
            "listen": f"127.0.0.1:{free_port()}",
            "delays": ["1s"],
            "max_attempts": 3,
            "jitter": 0,
            "state_dir": str(workdir / "retry"),
            "admin_token": ADMIN_TOKEN,
        },
        "destinations": [
            {"name": "pacs", "host": "127.0.0.1", "port": scp.port, "called_aet": scp.aet}
        ],
        "routes": [{"destinations": ["pacs"]}],
    }


@dataclass
class Stack:
    config: Config
    registries: dict[str, CollectorRegistry] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    stops: dict[str, asyncio.Event] = field(default_factory=dict)
    #: The sender as `sendqueue run` has it: processes of its own under a supervisor.
    sender_processes: bool = False

    def listen(self, service: str) -> str:
        listen: str = getattr(self.config, service).listen
        return listen

    def url(self, service: str, path: str = "/metrics") -> str:
        return f"http://{self.listen(service)}{path}"

    async def scrape(self, service: str) -> str:
        async with aiohttp.ClientSession() as session, session.get(self.url(service)) as resp:
            resp.raise_for_status()
            return await resp.text()

    def start(self, name: str) -> None:
        """Run one service (again: with a fresh registry, as a new process would have)."""
        runners: dict[str, Callable[..., Coroutine[Any, Any, None]]] = dict(_services())
        if self.sender_processes:
            runners["sender"] = run_sender_processes
        self.registries[name] = CollectorRegistry()
        self.stops[name] = asyncio.Event()
        main = runners[name](self.config, self.stops[name], self.registries[name])
        self.tasks[name] = asyncio.create_task(main, name=name)

    async def stop(self, name: str, timeout: float = 30.0) -> None:
        """Stop one service and wait for it; the others go on."""
        self.stops[name].set()
        task = self.tasks.pop(name)
        await asyncio.wait_for(task, timeout)

    async def wait_healthy(self, timeout: float = 30.0) -> None:
        await _wait_healthy(self, self.tasks, timeout)


@contextlib.asynccontextmanager
async def running(
    config: Config, timeout: float = 30.0, *, sender_processes: bool = False
) -> AsyncIterator[Stack]:
    """Start ingest, sender and retry; stop them (and wait for them) when the block ends."""
    stack = Stack(config, sender_processes=sender_processes)
    for name in SERVICES:
        stack.start(name)
    try:
        await stack.wait_healthy(timeout)
        yield stack
    finally:
        for event in stack.stops.values():
            event.set()
        tasks = list(stack.tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise errors[0]


async def _wait_healthy(stack: Stack, tasks: dict[str, asyncio.Task[None]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        for name, task in tasks.items():
            while True:
                if task.done():
                    task.result()  # raises what stopped it
                    raise RuntimeError(f"{name} stopped during start-up")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(stack.url(name, "/healthz")) as resp:
                        if resp.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} not healthy after {timeout} s")
                await asyncio.sleep(0.1)


def build_config(settings: dict[str, Any]) -> Config:
    return parse_config(settings, environ={})
