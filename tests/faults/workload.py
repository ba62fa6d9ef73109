"""The instances a fault scenario pushes through sendqueue, and what the peer answers each.

Most instances are plainly delivered; a few are refused once with a transient status (so
the retry path, its delay queues and the retry service are busy during every fault) and a
few are refused for good (so parking is too). The plan is a function of the instance's
index, so a scenario's expected outcome is known before it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydicom.uid import generate_uid

from tests.support.dicom_factory import _pixel_frame, build_dataset, to_bytes
from tests.support.orthanc import OrthancProcess
from tests.support.scp import StatusFor

#: 128x128 16-bit: 32 KB, two to three PDUs at the receiver's 16 KB maximum, so that a
#: proxy fault can land in the middle of a PDU and of an instance.
ROWS = COLS = 128
PER_STUDY = 50
#: A large instance: 1024x1024 16-bit, 4 frames (8 MB).
LARGE_ROWS, LARGE_FRAMES = 1024, 4
#: One instance in PERMANENT_EVERY is refused for good (0xA900): it must end up parked.
PERMANENT_EVERY = 25
#: One instance in TRANSIENT_EVERY is refused once (0xA700), then stored.
TRANSIENT_EVERY = 10


class Plan(enum.Enum):
    DELIVER = "deliver"
    REFUSED_ONCE = "refused-once"
    REFUSED_FOR_GOOD = "refused-for-good"


def plan_of(index: int) -> Plan:
    if index % PERMANENT_EVERY == PERMANENT_EVERY - 1:
        return Plan.REFUSED_FOR_GOOD
    if index % TRANSIENT_EVERY == 3:
        return Plan.REFUSED_ONCE
    return Plan.DELIVER


@dataclass
class Workload:
    """`size` instances, made lazily (100k of them would not fit in memory at once)."""

    size: int
    rows: int = ROWS
    #: Every `large_every`-th instance is LARGE_BYTES (0: none): larger than the socket
    #: buffers, so that a peer that stops reading blocks the sender mid-instance.
    large_every: int = 0
    plans: dict[str, Plan] = field(default_factory=dict)
    uploaded: int = 0

    def instances(self) -> Iterator[bytes]:
        frame = _pixel_frame(self.rows, self.rows, 16)
        large_frame = _pixel_frame(LARGE_ROWS, LARGE_ROWS, 16) if self.large_every else b""
        study = series = ""
        for index in range(self.size):
            if index % PER_STUDY == 0:
                study, series = generate_uid(), generate_uid()
            large = bool(self.large_every) and index % self.large_every == 1
            rows = LARGE_ROWS if large else self.rows
            ds = build_dataset(
                study_uid=study,
                series_uid=series,
                patient_id=f"FAULT{index // PER_STUDY:05d}",
                rows=rows,
                cols=rows,
                frames=LARGE_FRAMES if large else 1,
                instance_number=index % PER_STUDY + 1,
            )
            ds.PixelData = large_frame * LARGE_FRAMES if large else frame
            self.plans[str(ds.SOPInstanceUID)] = plan_of(index)
            yield to_bytes(ds)

    def uids(self, plan: Plan | None = None) -> set[str]:
        return {uid for uid, p in self.plans.items() if plan is None or p == plan}

    def status_for(self) -> StatusFor:
        """The peer's answer to the nth C-STORE of an instance."""

        def status(uid: str, nth: int) -> int:
            plan = self.plans.get(uid, Plan.DELIVER)
            if plan is Plan.REFUSED_FOR_GOOD:
                return 0xA900
            if plan is Plan.REFUSED_ONCE and nth == 1:
                return 0xA700
            return 0x0000

        return status

    async def upload(self, orthanc: OrthancProcess, seconds: float, deadline: float) -> None:
        """Upload every instance, spread over about `seconds` (so that the fault meets a
        pipeline at work, not an idle one); uploads retry while Orthanc is down."""
        started = time.monotonic()
        gate = asyncio.Semaphore(4)
        pending: set[asyncio.Task[None]] = set()
        for index, data in enumerate(self.instances()):
            due = started + seconds * index / max(1, self.size)
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            await gate.acquire()
            task = asyncio.create_task(self._upload_one(orthanc, data, gate, deadline))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)

    async def _upload_one(
        self, orthanc: OrthancProcess, data: bytes, gate: asyncio.Semaphore, deadline: float
    ) -> None:
        try:
            while True:
                with contextlib.suppress(OSError, urllib.error.URLError):
                    await asyncio.to_thread(orthanc.upload, data)
                    self.uploaded += 1
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError("Orthanc refused an upload until the scenario's deadline")
                await asyncio.sleep(0.2)  # Orthanc is being restarted: try again
        finally:
            gate.release()
