"""Several sender processes under one command: `[sender] processes`.

One sender process is bound to one core: its event loop and its send threads share
Python's GIL. With several, the command's process supervises N sender processes,
competing consumers of the same work queues (as N `sendqueue sender` commands would be):

- each child reads the loaded config on its stdin (environment and Orthanc's destinations
  already applied, so all of them send alike) and serves its metrics and health on a
  socket bound here, so the supervisor always knows where to ask;
- the supervisor serves, at [sender] listen, their metrics as one page (every sample
  labelled `process="1".."N"`) and one /healthz (every child running and healthy);
- a child that dies is started again after a pause that doubles up to a minute; the jobs
  it held were unacknowledged, so RabbitMQ hands them to the others at once;
- a child whose supervisor dies gets SIGTERM (PR_SET_PDEATHSIG): none is left running
  alone;
- SIGTERM stops them all, each finishing its in-flight sends within shutdown_grace.

`python -m sendqueue.services.sender.processes` is the child's entry point.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge

from sendqueue.services.sender.process_metrics import merge_expositions
from sendqueue.shared import logs
from sendqueue.shared.config import Config, config_from_json, config_to_json, secrets_of
from sendqueue.shared.lifecycle import ServiceParts, run_until_signalled

log = logging.getLogger(__name__)

CHILD_MODULE = "sendqueue.services.sender.processes"
#: Pause before a dead child starts again; doubles after each quick death, up to the max.
RESTART_MIN = 1.0
RESTART_MAX = 60.0
#: A child that ran this long before it died was not crash-looping: the pause resets.
STABLE_AFTER = 60.0
#: Beyond shutdown_grace, for a child to close its connections before it is killed.
STOP_MARGIN = 10.0
#: Asking a child for its metrics or health: a child that hangs must not hang the scrape.
ASK_TIMEOUT = 5.0


class SenderProcess:
    """One supervised child: its listening socket (kept across restarts) and process."""

    def __init__(self, index: int, config_json: bytes) -> None:
        self.index = index
        self._config_json = config_json
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def spawn(self) -> None:
        fd = self.sock.fileno()
        command = [sys.executable, "-m", CHILD_MODULE, "--listen-fd", str(fd)]
        command += ["--index", str(self.index), "--parent", str(os.getpid())]
        self.process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, pass_fds=(fd,)
        )
        assert self.process.stdin is not None
        self.process.stdin.write(self._config_json)
        await self.process.stdin.drain()
        self.process.stdin.close()

    async def supervise(self, stopping: asyncio.Event, restarts: Counter) -> None:
        """Keep the child running until `stopping`."""
        pause = RESTART_MIN
        while not stopping.is_set():
            started = time.monotonic()
            code = await self._run_once()
            if stopping.is_set():
                return
            ran = time.monotonic() - started
            pause = RESTART_MIN if ran > STABLE_AFTER else pause
            # 0: it was stopped (a signal sent to it alone); anything else: it failed.
            log.log(
                logging.WARNING if code == 0 else logging.ERROR,
                "sender process %d ended (%s) after %.0fs; starting it again in %.0fs",
                self.index,
                f"exit code {code}" if isinstance(code, int) else code,
                ran,
                pause,
            )
            restarts.inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), pause)
            pause = min(pause * 2, RESTART_MAX)

    async def _run_once(self) -> int | str:
        """Start the child and wait for it to end: its exit code, or why it did not start
        (a child that dies before it read its config breaks the pipe)."""
        try:
            await self.spawn()
        except OSError as exc:
            if self.running:
                assert self.process is not None
                self.process.kill()
            if self.process is not None:
                await self.process.wait()
            return f"not started: {exc!r}"
        assert self.process is not None
        return await self.process.wait()

    async def stop(self, grace: float) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), grace + STOP_MARGIN)
        except TimeoutError:
            log.warning("sender process %d did not stop in time: killed", self.index)
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()

    async def ask(self, session: aiohttp.ClientSession, path: str) -> tuple[int, str] | None:
        """(status, body) of GET `path` on the child; None when it does not answer."""
        if not self.running:
            return None
        try:
            async with session.get(self.url + path) as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return None


async def run_sender_processes(
    config: Config, stop: asyncio.Event, registry: CollectorRegistry | None = None
) -> None:
    """The sender as `[sender] processes` child processes, supervised until `stop`."""
    count = config.sender.process_count()
    registry = registry or CollectorRegistry()
    running = Gauge(
        "sendqueue_sender_processes",
        "Sender processes running under this supervisor.",
        registry=registry,
    )
    restarts = Counter(
        "sendqueue_sender_process_restarts",
        "Sender processes started again after they died.",
        registry=registry,
    )
    payload = config_to_json(config)
    children = [SenderProcess(index, payload) for index in range(1, count + 1)]
    running.set_function(lambda: sum(child.running for child in children))
    stopping = asyncio.Event()
    async with ServiceParts() as parts:
        for child in children:
            parts.callback(child.sock.close)
        parts.push_async_callback(_stop_all, children, stopping, config.sender.shutdown_grace)
        for child in children:
            parts.task(child.supervise(stopping, restarts), f"sender-process-{child.index}")
        timeout = aiohttp.ClientTimeout(total=ASK_TIMEOUT)
        session = parts.closing(aiohttp.ClientSession(timeout=timeout))
        await parts.server(supervisor_app(children, registry, session), config.sender.listen)
        log.info("sender running as %d process(es)", count)
        await stop.wait()
        log.info("sender stopping: its processes finish their in-flight sends")


async def _stop_all(children: list[SenderProcess], stopping: asyncio.Event, grace: float) -> None:
    stopping.set()
    await asyncio.gather(*(child.stop(grace) for child in children))


class Child(Protocol):
    """What the supervisor's HTTP answers need of a child (SenderProcess)."""

    index: int

    async def ask(self, session: aiohttp.ClientSession, path: str) -> tuple[int, str] | None: ...


def supervisor_app(
    children: Sequence[Child],
    registry: CollectorRegistry,
    session: aiohttp.ClientSession,
) -> web.Application:
    """/metrics: the children's metrics labelled by process, and the supervisor's own;
    /healthz: ok when every child runs and says ok (its checks, ANDed across children)."""

    async def metrics(_request: web.Request) -> web.Response:
        answers = await asyncio.gather(*(child.ask(session, "/metrics") for child in children))
        pages = {
            str(child.index): answer[1]
            for child, answer in zip(children, answers, strict=True)
            if answer is not None and answer[0] == 200
        }
        body = merge_expositions(pages, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        answers = await asyncio.gather(*(child.ask(session, "/healthz") for child in children))
        checks = {"processes": all(answer is not None for answer in answers)}
        for answer in answers:
            for name, ok in _child_checks(answer).items():
                checks[name] = checks.get(name, True) and ok
        ok = all(checks.values())
        return web.json_response(
            {"status": "ok" if ok else "degraded", "checks": checks}, status=200 if ok else 503
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


def _child_checks(answer: tuple[int, str] | None) -> dict[str, bool]:
    if answer is None:
        return {}
    try:
        checks = json.loads(answer[1]).get("checks", {})
    except (ValueError, AttributeError):
        return {"answers": False}
    return {str(name): bool(ok) for name, ok in checks.items()}


# -- the child ------------------------------------------------------------------------
def _die_with(parent: int) -> None:
    """SIGTERM when the supervisor dies (Linux); a supervisor already gone: stop now."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        sys.exit(0)


def child_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=CHILD_MODULE)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with(args.parent)
    logs.configure()
    config = config_from_json(sys.stdin.buffer.read())
    logs.hide_secrets(secrets_of(config))
    # Here, not at the top: the supervisor (in `sendqueue run`, ingest's process) does not
    # pay for the sender's imports.
    from sendqueue.services.sender.app import run_sender

    listen = socket.socket(fileno=args.listen_fd)
    log.info("sender process %d of %d", args.index, config.sender.process_count())
    main = functools.partial(run_sender, listen_socket=listen)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_until_signalled({"sender": main}, config))
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
