"""Helpers of the HA tests: which of several processes is the active one, and uploads that
keep running while they are killed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from tests.integration.harness import Pipeline
from tests.support.dicom_factory import make_study
from tests.support.orthanc import OrthancProcess


async def active_among(
    pipeline: Pipeline, listens: Sequence[str], metric: str, timeout: float = 30.0
) -> str:
    """The listen address of the one process whose `metric` is 1; fails if two are."""
    deadline = time.monotonic() + timeout
    while True:
        active = []
        for listen in listens:
            try:
                if await pipeline.metric_sum(listen, metric) == 1:
                    active.append(listen)
            except OSError:
                continue  # not listening (yet): not active either
        assert len(active) <= 1, f"two active processes at once: {active}"
        if active:
            return active[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no process of {list(listens)} became active in {timeout}s")
        await asyncio.sleep(0.1)


class Uploads:
    """Uploads studies to Orthanc in the background, one instance at a time."""

    def __init__(self, orthanc: OrthancProcess, studies: int, per_study: int) -> None:
        self.data = [d for _ in range(studies) for d in make_study(per_study)]
        self._orthanc = orthanc
        self._task: asyncio.Task[None] | None = None

    def start(self, pause: float) -> None:
        self._task = asyncio.create_task(self._run(pause))

    async def _run(self, pause: float) -> None:
        for data in self.data:
            await asyncio.to_thread(self._orthanc.upload, data)
            await asyncio.sleep(pause)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def finish(self, timeout: float = 120.0) -> None:
        assert self._task is not None
        await asyncio.wait_for(self._task, timeout)
