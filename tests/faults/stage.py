"""One sendqueue deployment under a fault: its services as processes, and what they talk to.

The services run as `sendqueue ingest|sender|retry` processes (tests/integration/harness.py
`Pipeline`), so that a fault can kill one with SIGKILL and so that a process that exits by
itself is seen: the watcher notes it (a finding) and starts it again, so the scenario can
still be reckoned.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.faults.proxy import FaultyProxy
from tests.integration.harness import Pipeline
from tests.support.orthanc import OrthancProcess
from tests.support.scp import ScriptedSCP

SERVICES = ("retry", "sender", "ingest")


@dataclass
class Stage:
    pipeline: Pipeline
    orthanc: OrthancProcess
    scp: ScriptedSCP
    proxy: FaultyProxy | None
    spool: Path
    rng: random.Random
    #: How long the fault lasts; the workload is uploaded across it.
    window: float
    faults: Counter[str] = field(default_factory=Counter)
    #: Services that exited by themselves: (name, exit code).
    exited: list[tuple[str, int]] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    _started: float = field(default_factory=time.monotonic)
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def note(self, what: str) -> None:
        self.timeline.append(f"{time.monotonic() - self._started:7.1f}s {what}")

    # -- services ---------------------------------------------------------------------------
    def spawn(self, name: str) -> None:
        self._procs[name] = self.pipeline.spawn(name)

    async def start_services(self) -> None:
        for name in SERVICES:
            self.spawn(name)
        await self.pipeline.wait_healthy(*SERVICES, timeout=90)
        self._started = time.monotonic()

    async def kill_and_restart(self, name: str, down: float) -> None:
        """kill -9, then a new process after `down` seconds."""
        self._procs.pop(name)
        await asyncio.to_thread(self.pipeline.kill, name)
        self.faults[f"kill -9 {name}"] += 1
        self.note(f"kill -9 {name}")
        await asyncio.sleep(down)
        self.spawn(name)

    async def watch(self) -> None:
        """Until cancelled: a service that exits by itself is noted and started again."""
        while True:
            for name, proc in list(self._procs.items()):
                if proc.poll() is not None and self._procs.get(name) is proc:
                    self.exited.append((name, proc.returncode))
                    self.note(f"{name} EXITED by itself ({proc.returncode})")
                    self.spawn(name)
            await asyncio.sleep(0.25)

    def stop_services(self) -> list[tuple[str, int]]:
        """SIGTERM each; those that did not exit 0 by themselves: (name, exit code)."""
        hung = []
        for name in ("ingest", "sender", "retry"):
            if self._procs.pop(name, None) is None:
                continue
            code = self.pipeline.terminate(name)
            if code != 0:
                hung.append((name, code))
                self.note(f"{name} did not stop cleanly on SIGTERM ({code})")
        return hung

    # -- what has arrived where ------------------------------------------------------------
    async def parked_uids(self) -> set[str] | None:
        """SOPInstanceUIDs the admin API lists as parked (None while it does not answer)."""
        uids: set[str] = set()
        cursor = ""
        with contextlib.suppress(aiohttp.ClientError, OSError, ValueError, KeyError):
            while True:
                query = "?limit=10000" + (f"&cursor={cursor}" if cursor else "")
                status, body = await self.pipeline.admin("GET", "/api/parked" + query)
                if status != 200:
                    return None
                uids |= {item["sop_instance_uid"] for item in body["items"]}
                if not (cursor := body.get("next_cursor") or ""):
                    return uids
        return None
